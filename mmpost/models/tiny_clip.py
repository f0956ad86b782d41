"""A small open_clip model trained offline on a task's own (frame, caption) pairs.

VideoRFT scores how well a reasoning trace describes the video with a pretrained SigLIP. Nothing
pretrained can be downloaded here, so the default is a real open_clip architecture (ViT image
tower, causal text transformer, open_clip's bundled BPE tokenizer) at a tiny size, trained with
open_clip's own contrastive ``ClipLoss`` on pairs the task generates. It is saved the open_clip way
(a model-config JSON + a state-dict checkpoint) and loaded back through ``open_clip.create_model``.
``load_clip("ARCH:CHECKPOINT")`` loads any open_clip weights a user has locally instead.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from mmpost.models.tiny_qwen2vl import mmpost_home, save_built

TINY_NAME = "mmpost-tiny-clip"


def tiny_config(image_size: int) -> dict:
    return {"embed_dim": 64,
            "vision_cfg": {"image_size": image_size, "layers": 2, "width": 64, "head_width": 32, "patch_size": 12},
            "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}


def train_tiny_clip(out_dir: Path, pairs: list, *, image_size: int, steps: int = 400, batch_size: int = 64,
                    lr: float = 2e-3, seed: int = 0) -> Path:
    """Train the tiny open_clip model on ``pairs`` of ``(PIL image, caption)``; save it atomically."""
    import open_clip
    import torch
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    config = tiny_config(image_size)
    model = open_clip.CLIP(**{k: v for k, v in config.items() if k == "embed_dim"},
                           vision_cfg=open_clip.CLIPVisionCfg(**config["vision_cfg"]),
                           text_cfg=open_clip.CLIPTextCfg(**config["text_cfg"]))
    preprocess = open_clip.image_transform(image_size, is_train=False)
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=config["text_cfg"]["context_length"])
    loss_fn = open_clip.ClipLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    rng = random.Random(seed)
    # built on first use, which is often inside an evaluation's or a reward's no_grad: training needs grad
    with torch.enable_grad():
        for _ in tqdm(range(steps), desc="training the semantic CLIP", unit="step"):
            batch = rng.sample(pairs, min(batch_size, len(pairs)))
            images = torch.stack([preprocess(image) for image, _ in batch])
            image_features, text_features, scale = model(images, tokenizer([caption for _, caption in batch]))
            loss = loss_fn(image_features, text_features, scale)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return save_built(out_dir, [lambda d: (d / f"{TINY_NAME}.json").write_text(json.dumps(config, indent=1)),
                                lambda d: torch.save(model.state_dict(), d / "open_clip_model.pt")],
                      {"pairs": len(pairs), "steps": steps, "final_loss": loss.item(), "seed": seed})


def cached_tiny_clip(name: str, pairs_fn, image_size: int, **train_args) -> Path:
    """The trained tiny CLIP ``name`` under ``MMPOST_HOME/models`` (trained on first use)."""
    key = json.dumps([name, image_size, train_args], sort_keys=True)
    path = mmpost_home() / "models" / f"{name}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"
    if not (path / "open_clip_model.pt").exists():
        train_tiny_clip(path, pairs_fn(), image_size=image_size, **train_args)
    return path


def load_clip(spec: str):
    """``(model, preprocess, tokenizer)`` for a tiny CLIP directory or ``ARCH:CHECKPOINT`` (open_clip)."""
    import open_clip

    path = Path(spec)
    if path.is_dir():
        open_clip.add_model_config(path / f"{TINY_NAME}.json")
        arch, checkpoint = TINY_NAME, path / "open_clip_model.pt"
    else:
        arch, _, checkpoint = spec.partition(":")
        if not checkpoint or not Path(checkpoint).is_file():
            raise FileNotFoundError(f"--clip-model expects a trained tiny-CLIP directory or ARCH:CHECKPOINT with a "
                                    f"local open_clip checkpoint file, got {spec!r}")
    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=str(checkpoint))
    model.eval()
    context = getattr(model, "context_length", 77)
    return model, preprocess, open_clip.get_tokenizer(arch, context_length=context)
