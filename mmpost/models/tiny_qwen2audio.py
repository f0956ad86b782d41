"""Build a tiny Qwen2-Audio-class model (Whisper-style audio encoder + Qwen2 LM) fully offline.

As for the tiny VLM: a byte-level BPE tokenizer trained on the task's texts, the Whisper feature
extractor built from parameters (log-mel, 16 kHz), a random-init ``Qwen2AudioForConditionalGeneration``
from a config, all saved with ``save_pretrained`` and loaded back through ``from_pretrained``. The
encoder's input length is fixed by its positions (``max_source_positions`` x 2 mel frames), so the
feature extractor pads or cuts every clip to ``clip_seconds``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mmpost.models.tiny_qwen2vl import SPECIAL_TOKENS, mmpost_home, save_built, train_tokenizer

AUDIO_TOKENS = ["<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]
CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'audio' or 'audio' in content %}{% set audio_count.value = audio_count.value + 1 %}"
    "Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_qwen2audio(out_dir: Path, corpus: list[str], *, vocab_size: int = 400, mel_bins: int = 64,
                          clip_seconds: int = 2, seed: int = 0) -> Path:
    """Train the tokenizer, build feature extractor, processor and random model; save to ``out_dir``."""
    import torch
    from transformers import (Qwen2AudioConfig, Qwen2AudioEncoderConfig, Qwen2AudioForConditionalGeneration,
                              Qwen2AudioProcessor, WhisperFeatureExtractor)

    tokenizer = train_tokenizer(corpus, vocab_size)
    tokenizer.add_special_tokens({"additional_special_tokens": [*SPECIAL_TOKENS[1:], *AUDIO_TOKENS]})
    tokenizer.chat_template = CHAT_TEMPLATE
    extractor = WhisperFeatureExtractor(feature_size=mel_bins, sampling_rate=16000, hop_length=160,
                                        chunk_length=clip_seconds, n_fft=400)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>", "<|AUDIO|>")}
    frames = clip_seconds * 100  # 10 ms hop
    config = Qwen2AudioConfig(
        audio_config=Qwen2AudioEncoderConfig(num_mel_bins=mel_bins, encoder_layers=2, encoder_attention_heads=2,
                                             encoder_ffn_dim=256, d_model=64, max_source_positions=frames // 2),
        text_config=dict(model_type="qwen2", hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=512, vocab_size=len(tokenizer),
                         max_position_embeddings=2048, tie_word_embeddings=True, eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"], bos_token_id=ids["<|endoftext|>"]),
        audio_token_index=ids["<|AUDIO|>"])
    torch.manual_seed(seed)
    model = Qwen2AudioForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    processor = Qwen2AudioProcessor(feature_extractor=extractor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)

    return save_built(out_dir, [model, processor], {"family": "qwen2_audio", "vocab_size": vocab_size,
                                                    "mel_bins": mel_bins, "clip_seconds": clip_seconds, "seed": seed})


def cached_tiny_qwen2audio(name: str, corpus_fn, **build_args) -> Path:
    """Path of the cached tiny audio LM ``name`` under ``MMPOST_HOME/models``, built first if needed."""
    corpus = corpus_fn()
    digest = hashlib.sha1(json.dumps([build_args, corpus], sort_keys=True).encode()).hexdigest()[:10]
    path = mmpost_home() / "models" / f"{name}-{digest}"
    if not (path / "config.json").exists():
        build_tiny_qwen2audio(path, corpus, **build_args)
    return path
