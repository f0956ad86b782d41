"""The composed VLM: tower choices, --model spec parsing, refusal of towers without a feature map."""

import pytest

from mmpost.models.composed_vlm import build_composed_vlm, cached_composed_vlm

CORPUS = ["Find the red circle.", "<answer>[1, 2, 3, 4]</answer>"] * 20


def test_spec_selects_the_tower_and_reloads_as_an_ordinary_checkpoint(mmpost_home):
    from transformers import AutoConfig, AutoModelForMultimodalLM, AutoProcessor

    clip = cached_composed_vlm("spec-test", lambda: CORPUS, "composed", image_side=112, vocab_size=300)
    timm = cached_composed_vlm("spec-test", lambda: CORPUS, "composed:convnext_atto", image_side=112, vocab_size=300)
    assert clip != timm
    assert AutoConfig.from_pretrained(clip).model_type == "llava"
    assert AutoConfig.from_pretrained(timm).model_type == "fast_vlm"
    for path in (clip, timm):
        model = AutoModelForMultimodalLM.from_pretrained(path)
        processor = AutoProcessor.from_pretrained(path)
        from PIL import Image

        encoded = processor(text=["<image>Find it."], images=[Image.new("RGB", (112, 112))], return_tensors="pt")
        image_tokens = int((encoded["input_ids"] == model.config.image_token_id).sum())
        assert image_tokens == 49  # 7 x 7 cells at stride 16, the CLS token dropped for CLIP
        assert model(**encoded).logits.shape[1] == encoded["input_ids"].shape[1]
    # the same spec is served from the cache, not rebuilt
    assert cached_composed_vlm("spec-test", lambda: CORPUS, "composed", image_side=112, vocab_size=300) == clip


def test_a_vit_timm_tower_is_refused_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match="token sequences.*use a CNN or hybrid tower, or 'clip'"):
        build_composed_vlm(tmp_path / "vit", CORPUS, tower="vit_tiny_patch16_224",
                           tower_args={"img_size": 112, "depth": 1}, vocab_size=300)
    assert not (tmp_path / "vit").exists()
