"""Build a tiny Qwen2-VL-class model and processor fully offline.

Nothing is downloaded: a byte-level BPE tokenizer is trained with ``tokenizers`` on a corpus the
task provides, the Qwen2-VL special tokens and chat template are added, the image processor is
built from parameters, and the model is random-initialised from a config. Everything is saved
with ``save_pretrained`` and later loaded through the ordinary ``from_pretrained`` path, exactly
like a real checkpoint (see ``shared/reference/tinyvlm.md``). The build is deterministic: the
same corpus and seed give identical files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]

# Qwen2-VL's chat template without the default system prompt (saves tokens at this scale).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# text hidden x layers, vision width x layers; 'tiny' is what a 20-minute CPU run can train.
PRESETS = {
    "tiny": dict(hidden=128, layers=2, heads=4, kv_heads=2, vision_width=64, vision_layers=2),
    "small": dict(hidden=256, layers=4, heads=4, kv_heads=2, vision_width=128, vision_layers=4),
}


def mmpost_home() -> Path:
    """Cache root: ``$MMPOST_HOME`` or the user cache dir (``~/.cache/mmpost``)."""
    if os.environ.get("MMPOST_HOME"):
        return Path(os.environ["MMPOST_HOME"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mmpost"


def save_built(out_dir: Path, parts: list, build_info: dict) -> Path:
    """Save every part (``save_pretrained`` of a model or processor, or a callable given the
    directory) and ``mmpost_build.json`` into ``out_dir``, atomically: written to a temporary sibling
    and renamed, so a half-built model is never visible. When another process finished the same
    build first, its copy is kept."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    for part in parts:
        part.save_pretrained(tmp) if hasattr(part, "save_pretrained") else part(tmp)
    (tmp / "mmpost_build.json").write_text(json.dumps(build_info, indent=1))
    if out_dir.exists():
        shutil.rmtree(tmp)
    else:
        tmp.rename(out_dir)
    return out_dir


def train_tokenizer(corpus: list[str], vocab_size: int):
    """Byte-level BPE trained on ``corpus``; pre-split by line, then every digit alone.

    Splitting by line lets frequent boiler-plate lines become single tokens; isolating digits
    keeps every data value a sequence of learnable digit tokens (a merged "3, 7" would not be).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\n"), behavior="merged_with_previous"),
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", padding_side="left",
                                   additional_special_tokens=SPECIAL_TOKENS[1:])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_processor(tokenizer, image_side: int = 112):
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    pixels = dict(min_pixels=28 * 28, max_pixels=image_side * image_side, patch_size=14, merge_size=2,
                  temporal_patch_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(**pixels), tokenizer=tokenizer,
                            video_processor=Qwen2VLVideoProcessor(**pixels), chat_template=CHAT_TEMPLATE)


def build_config(tokenizer, preset: str):
    from transformers import Qwen2VLConfig

    p = PRESETS[preset]
    head_dim = p["hidden"] // p["heads"]
    quarter = head_dim // 2 // 4  # mrope_section (t, h, w) must sum to head_dim / 2
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    return Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=p["hidden"], intermediate_size=p["hidden"] * 4,
            num_hidden_layers=p["layers"], num_attention_heads=p["heads"], num_key_value_heads=p["kv_heads"],
            max_position_embeddings=2048, tie_word_embeddings=True, eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"], bos_token_id=ids["<|endoftext|>"],
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                             "mrope_section": [head_dim // 2 - 2 * quarter, quarter, quarter]},
        ),
        vision_config=dict(depth=p["vision_layers"], embed_dim=p["vision_width"], hidden_size=p["hidden"],
                           num_heads=max(1, p["vision_width"] // 32), mlp_ratio=4, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )


def build_tiny_qwen2vl(out_dir: Path, corpus: list[str], preset: str = "tiny", vocab_size: int = 1024,
                       image_side: int = 112, seed: int = 0) -> Path:
    """Train the tokenizer, build processor and random-init model, ``save_pretrained`` to ``out_dir``."""
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    tokenizer = train_tokenizer(corpus, vocab_size)
    processor = build_processor(tokenizer, image_side)
    config = build_config(tokenizer, preset)
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    return save_built(out_dir, [model, processor], {"family": "qwen2_vl", "preset": preset, "vocab_size": vocab_size,
                                                    "image_side": image_side, "seed": seed})


def cached_tiny_qwen2vl(name: str, corpus_fn, **build_args) -> Path:
    """Path of the cached tiny model ``name`` under ``MMPOST_HOME/models``, building it first if needed.

    The cache key covers the build arguments and the tokenizer corpus, so changing either builds
    a new model instead of silently reusing an old one.
    """
    corpus = corpus_fn()
    digest = hashlib.sha1(json.dumps([build_args, corpus], sort_keys=True).encode()).hexdigest()[:10]
    path = mmpost_home() / "models" / f"{name}-{digest}"
    if not (path / "config.json").exists():
        build_tiny_qwen2vl(path, corpus, **build_args)
    return path
