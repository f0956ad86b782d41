"""Compose a LLaVA-style VLM from any timm vision tower and any causal LM, offline.

The result is a transformers ``FastVlmForConditionalGeneration`` (LLaVA's design: vision tower ->
two-layer MLP projector -> the LM's input embeddings at ``<image>`` placeholders) whose vision
tower is a ``TimmWrapperModel``. So the composed model is an ordinary checkpoint: saved with
``save_pretrained`` and loaded by ``AutoModelForImageTextToText`` / ``AutoProcessor`` like any
hub model, and usable anywhere ``--model DIR`` is.

The tower must give a feature map ``[B, C, H, W]`` (a timm CNN or hybrid: ConvNeXt, ResNet,
FastViT, ...; each of its ``H * W`` cells becomes one image token). Plain ViTs return token
sequences instead and are refused here with that reason. Pass ``pretrained_tower`` (a local
timm checkpoint file) or ``text_model`` (a local causal-LM directory) to start from real weights;
everything else is random-initialised from configs.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from mmpost.models.tiny_qwen2vl import SPECIAL_TOKENS, train_tokenizer

IMAGE_TOKEN = "<image>"
# Qwen2-VL's template with LLaVA's single <image> placeholder (the processor expands it to one
# token per feature-map cell).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}<image>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# A small ConvNeXt (one block per stage), stride 16 (its last stage dilated instead of strided):
# a 112-pixel image gives 7 x 7 = 49 image tokens.
TINY_TOWER = {"architecture": "convnext_atto",
              "model_args": {"depths": [1, 1, 1, 1], "dims": [16, 32, 64, 128], "output_stride": 16}}
TINY_TEXT = {"model_type": "qwen2", "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "intermediate_size": 512, "max_position_embeddings": 2048}


def _tower_shape(architecture: str, model_args: dict, image_side: int, pretrained_tower: str = "") -> tuple[int, int]:
    """(channels, stride) of the tower's final feature map, measured on a dummy image."""
    import timm
    import torch

    tower = timm.create_model(architecture, pretrained=bool(pretrained_tower), num_classes=0, **model_args,
                              **({"pretrained_cfg_overlay": {"file": pretrained_tower}} if pretrained_tower else {}))
    with torch.no_grad():
        features = tower.forward_features(torch.zeros(1, 3, image_side, image_side))
    if features.dim() != 4:
        raise ValueError(f"timm model {architecture!r} returns {tuple(features.shape)} token sequences, not a "
                         "[B, C, H, W] feature map; pick a CNN or hybrid tower (convnext_*, resnet*, fastvit_*)")
    if image_side % features.shape[-1]:
        raise ValueError(f"image side {image_side} is not a multiple of the tower's output grid {features.shape[-1]}")
    return features.shape[1], image_side // features.shape[-1]


def build_composed_vlm(out_dir: Path, corpus: list[str], *, tower: str = TINY_TOWER["architecture"],
                       tower_args: dict | None = None, pretrained_tower: str = "", text_model: str = "",
                       vocab_size: int = 512, image_side: int = 112, seed: int = 0) -> Path:
    """Build the composed VLM and its processor, ``save_pretrained`` them to ``out_dir`` (atomically).

    Args:
        corpus: texts the tokenizer is trained on (ignored when ``text_model`` brings its own).
        tower: a timm architecture name; ``tower_args`` are its constructor arguments.
        pretrained_tower: a local timm weights file for the tower ("" = random init).
        text_model: a local causal-LM directory (its tokenizer and weights are used) or "" for a
            tiny random Qwen2 LM.
        image_side: the square input size the image processor resizes to.
    """
    import torch
    from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, CLIPImageProcessor, FastVlmConfig,
                              FastVlmForConditionalGeneration, LlavaProcessor, TimmWrapperConfig)

    tower_args = dict(TINY_TOWER["model_args"] if tower == TINY_TOWER["architecture"] and tower_args is None
                      else tower_args or {})
    channels, stride = _tower_shape(tower, tower_args, image_side, pretrained_tower)
    if text_model:
        tokenizer = AutoTokenizer.from_pretrained(text_model)
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        text_config = AutoConfig.from_pretrained(text_model)
    else:
        tokenizer = train_tokenizer(corpus, vocab_size)
        tokenizer.add_special_tokens({"additional_special_tokens": [*SPECIAL_TOKENS[1:], IMAGE_TOKEN]})
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
        text_config = AutoConfig.for_model(**TINY_TEXT, vocab_size=len(tokenizer), tie_word_embeddings=True,
                                           eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                                           bos_token_id=ids["<|endoftext|>"])
    tokenizer.chat_template = CHAT_TEMPLATE
    grid = image_side // stride
    config = FastVlmConfig(
        vision_config=TimmWrapperConfig(architecture=tower, do_pooling=False, hidden_size=channels,
                                        model_args=tower_args),
        text_config=text_config, image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=grid * grid, tie_word_embeddings=bool(text_config.tie_word_embeddings))
    torch.manual_seed(seed)
    model = FastVlmForConditionalGeneration(config)
    if text_model:
        language_model = AutoModelForCausalLM.from_pretrained(text_model)
        language_model.resize_token_embeddings(len(tokenizer))
        model.model.language_model.load_state_dict(language_model.model.state_dict())
        model.lm_head.load_state_dict(language_model.lm_head.state_dict())
    else:
        model.resize_token_embeddings(len(tokenizer))
    if pretrained_tower:
        import timm

        weights = timm.create_model(tower, pretrained=True, num_classes=0, **tower_args,
                                    pretrained_cfg_overlay={"file": pretrained_tower}).state_dict()
        model.model.vision_tower.timm_model.load_state_dict(weights, strict=False)
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids(tokenizer.eos_token) \
        if text_model else text_config.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"height": image_side, "width": image_side}, do_center_crop=False,
                                           crop_size={"height": image_side, "width": image_side},
                                           image_mean=[0.5] * 3, image_std=[0.5] * 3),
        tokenizer=tokenizer, patch_size=stride, vision_feature_select_strategy="full", num_additional_image_tokens=0,
        image_token=IMAGE_TOKEN, chat_template=CHAT_TEMPLATE)

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    (tmp / "mmpost_build.json").write_text(json.dumps(
        {"family": "composed_vlm", "tower": tower, "tower_args": tower_args, "text_model": text_model,
         "image_side": image_side, "seed": seed}, indent=1))
    if out_dir.exists():  # another process finished first; keep its copy
        shutil.rmtree(tmp)
    else:
        tmp.rename(out_dir)
    return out_dir


def cached_composed_vlm(name: str, corpus_fn, spec: str = "composed", image_side: int = 112,
                        vocab_size: int = 512) -> Path:
    """The composed VLM named by ``spec``, cached under ``MMPOST_HOME/models`` (built on first use).

    ``spec`` is ``composed`` (tiny ConvNeXt + tiny Qwen2 LM), ``composed:TIMM_ARCH`` (that timm
    architecture, random init) or ``composed:TIMM_ARCH:LM_DIR`` (with a local causal LM's weights).
    """
    import hashlib

    from mmpost.models.tiny_qwen2vl import mmpost_home

    _, tower, text_model = (spec.split(":", 2) + ["", ""])[:3]
    tower = tower or TINY_TOWER["architecture"]
    corpus = [] if text_model else corpus_fn()
    key = json.dumps([tower, text_model, image_side, vocab_size, corpus], sort_keys=True)
    path = mmpost_home() / "models" / f"{name}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"
    if not (path / "config.json").exists():
        build_composed_vlm(path, corpus, tower=tower, text_model=text_model, image_side=image_side,
                           vocab_size=vocab_size)
    return path
