"""Compose a LLaVA-style VLM from a vision tower and any causal LM, offline.

LLaVA's design: vision tower -> two-layer MLP projector -> the LM's input embeddings at
``<image>`` placeholders. Two kinds of tower, each an ordinary transformers model class, so the
result is saved with ``save_pretrained`` and loaded by ``AutoModelForMultimodalLM`` /
``AutoProcessor`` like any hub checkpoint, and usable anywhere ``--model DIR`` is:

- ``clip``: a CLIP ViT (``LlavaForConditionalGeneration``, LLaVA-1.5's own layout). Its learned
  absolute position embeddings tell each image token where it is, which is what lets a small
  model trained from scratch learn to localise (measured: README, "grounding"). Random init, or
  ``clip=DIR`` for a local CLIP (vision) checkpoint's weights.
- any timm CNN or hybrid (``convnext_*``, ``resnet*``, ``nest_*``, ...): the tower is a
  ``TimmWrapperModel`` inside ``FastVlmForConditionalGeneration``; each cell of its ``[B, C, H, W]``
  feature map becomes one image token. Plain timm ViTs return token sequences, not maps, and are
  refused with that reason (use ``clip``). ``ARCH=FILE`` loads a local timm weights file.

The LM is a tiny random Qwen2 with a tokenizer trained on the task's corpus, or a local causal-LM
directory (its tokenizer and weights). ``--model composed[:TOWER[:LM_DIR]]`` selects this in a task.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mmpost.models.tiny_qwen2vl import SPECIAL_TOKENS, mmpost_home, save_built, train_tokenizer

IMAGE_TOKEN = "<image>"
# Qwen2-VL's template with LLaVA's single <image> placeholder (the processor expands it to one
# token per image feature).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}<image>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TINY_CLIP = {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2,
             "patch_size": 16}  # a 112-pixel image gives 7 x 7 = 49 image tokens
# A small ConvNeXt (one block per stage), stride 16 (its last stage dilated instead of strided).
TINY_CONVNEXT = {"depths": [1, 1, 1, 1], "dims": [16, 32, 64, 128], "output_stride": 16}
TINY_TEXT = {"model_type": "qwen2", "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "intermediate_size": 512, "max_position_embeddings": 2048}


def _tokenizer_and_text_config(corpus: list[str], vocab_size: int, text_model: str):
    from transformers import AutoConfig, AutoTokenizer

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
    return tokenizer, text_config


def _timm_tower(architecture: str, tower_args: dict, image_side: int, weights: str):
    """``(TimmWrapperConfig, stride, state_dict or None)`` for a timm CNN/hybrid tower."""
    import timm
    import torch
    from transformers import TimmWrapperConfig

    tower = timm.create_model(architecture, num_classes=0, **tower_args)
    if weights:
        from timm.models import load_checkpoint

        load_checkpoint(tower, weights, strict=False)
    with torch.no_grad():
        features = tower.forward_features(torch.zeros(1, 3, image_side, image_side))
    if features.dim() != 4:
        raise ValueError(f"timm model {architecture!r} returns {tuple(features.shape)} token sequences, not a "
                         "[B, C, H, W] feature map; use a CNN or hybrid tower, or 'clip' for a ViT")
    if image_side % features.shape[-1]:
        raise ValueError(f"image side {image_side} is not a multiple of the tower's output grid {features.shape[-1]}")
    config = TimmWrapperConfig(architecture=architecture, do_pooling=False, hidden_size=features.shape[1],
                               model_args=tower_args)
    return config, image_side // features.shape[-1], tower.state_dict() if weights else None


def build_composed_vlm(out_dir: Path, corpus: list[str], *, tower: str = "clip", tower_args: dict | None = None,
                       pretrained_tower: str = "", text_model: str = "", vocab_size: int = 512,
                       image_side: int = 112, seed: int = 0) -> Path:
    """Build the composed VLM and its processor, ``save_pretrained`` them to ``out_dir`` (atomically).

    Args:
        corpus: texts the tokenizer is trained on (ignored when ``text_model`` brings its own).
        tower: ``"clip"`` (a CLIP ViT) or a timm CNN/hybrid architecture name; ``tower_args``
            override the tower's config (default: the tiny ones above).
        pretrained_tower: a local CLIP checkpoint directory (``clip``) or timm weights file.
        text_model: a local causal-LM directory, or "" for a tiny random Qwen2 LM.
        image_side: the square input size the image processor resizes to.
    """
    import torch
    from transformers import (AutoModelForCausalLM, CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel,
                              FastVlmConfig, FastVlmForConditionalGeneration, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    tokenizer, text_config = _tokenizer_and_text_config(corpus, vocab_size, text_model)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    tie = bool(getattr(text_config, "tie_word_embeddings", False))
    tower_weights = None
    if tower == "clip":
        if pretrained_tower:
            vision_config = CLIPVisionConfig.from_pretrained(pretrained_tower)
            image_side = vision_config.image_size
            tower_weights = CLIPVisionModel.from_pretrained(pretrained_tower).state_dict()
        else:
            vision_config = CLIPVisionConfig(**{**TINY_CLIP, **(tower_args or {})}, image_size=image_side)
        stride, extra_tokens = vision_config.patch_size, 1  # LLaVA drops the CLS token ("default")
        config = LlavaConfig(vision_config=vision_config, text_config=text_config, image_token_index=image_token_id,
                             image_seq_length=(image_side // stride) ** 2, vision_feature_layer=-1,
                             vision_feature_select_strategy="default", tie_word_embeddings=tie)
        model_class, strategy = LlavaForConditionalGeneration, "default"
    else:
        tower_args = TINY_CONVNEXT if tower_args is None and tower.startswith("convnext") else tower_args or {}
        vision_config, stride, tower_weights = _timm_tower(tower, tower_args, image_side, pretrained_tower)
        extra_tokens = 0
        config = FastVlmConfig(vision_config=vision_config, text_config=text_config, image_token_index=image_token_id,
                               image_seq_length=(image_side // stride) ** 2, tie_word_embeddings=tie)
        model_class, strategy = FastVlmForConditionalGeneration, "full"
    torch.manual_seed(seed)
    model = model_class(config)
    if text_model:
        language_model = AutoModelForCausalLM.from_pretrained(text_model)
        language_model.resize_token_embeddings(len(tokenizer))
        model.model.language_model.load_state_dict(language_model.model.state_dict())
        model.lm_head.load_state_dict(language_model.lm_head.state_dict())
    else:
        model.resize_token_embeddings(len(tokenizer))
    if tower_weights is not None:
        target = model.model.vision_tower
        (target if tower == "clip" else target.timm_model).load_state_dict(tower_weights)
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    side = {"height": image_side, "width": image_side}
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size=side, do_center_crop=False, crop_size=side, image_mean=[0.5] * 3,
                                           image_std=[0.5] * 3),
        tokenizer=tokenizer, patch_size=stride, vision_feature_select_strategy=strategy,
        num_additional_image_tokens=extra_tokens, image_token=IMAGE_TOKEN, chat_template=CHAT_TEMPLATE)

    return save_built(out_dir, [model, processor], {
        "family": "composed_vlm", "tower": tower, "tower_args": tower_args, "pretrained_tower": pretrained_tower,
        "text_model": text_model, "image_side": image_side, "seed": seed})


def cached_composed_vlm(name: str, corpus_fn, spec: str = "composed", image_side: int = 112,
                        vocab_size: int = 512) -> Path:
    """The composed VLM named by ``spec``, cached under ``MMPOST_HOME/models`` (built on first use).

    ``spec`` is ``composed[:TOWER[:LM_DIR]]``; TOWER is ``clip`` (default), ``clip=CLIP_DIR``, a timm
    architecture or ``ARCH=WEIGHTS_FILE``; LM_DIR a local causal LM (default: a tiny random Qwen2).
    """
    _, tower, text_model = (spec.split(":", 2) + ["", ""])[:3]
    tower, _, pretrained_tower = (tower or "clip").partition("=")
    corpus = [] if text_model else corpus_fn()
    key = json.dumps([tower, pretrained_tower, text_model, image_side, vocab_size, corpus], sort_keys=True)
    path = mmpost_home() / "models" / f"{name}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"
    if not (path / "config.json").exists():
        build_composed_vlm(path, corpus, tower=tower, pretrained_tower=pretrained_tower, text_model=text_model,
                           image_side=image_side, vocab_size=vocab_size)
    return path
