"""``FlowActionModel``: observation encoder + flow-matching action expert (+ noise and value heads).

A small vision-language-action model in the pi0 mould: the encoder turns (camera image,
instruction, proprioception) into a context vector; the action expert predicts the velocity of
an action chunk [H, A] at flow time t given that context; Flow-Noise adds a noise head on the
expert's hidden features and PPO a value head on the context (pi0.5 puts it on the VLM prefix).

Encoders (``backbone``): ``mlp`` (state + instruction), ``timm:NAME`` (any timm image model,
random init) and ``vlm`` (a Qwen2-VL-class transformers model reading the image and the
instruction; mean-pooled last hidden state). Saved with :meth:`save_pretrained` as
``config.json`` + ``model.safetensors`` and loaded with :meth:`from_pretrained`.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

INSTRUCTION_BUCKETS = 4096


def mlp(sizes: list[int], activation=nn.SiLU) -> nn.Sequential:
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class InstructionEncoder(nn.Module):
    """Bag of hashed words -> mean embedding: enough to read "touch the blue ball", no tokenizer
    to ship. Words never seen in training keep their small initial vectors."""

    def __init__(self, dim: int):
        super().__init__()
        self.embed = nn.EmbeddingBag(INSTRUCTION_BUCKETS, dim, mode="mean")
        nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, instructions: list[str]) -> torch.Tensor:
        ids, offsets = [], []
        for text in instructions:
            offsets.append(len(ids))
            ids.extend(zlib.crc32(w.encode()) % INSTRUCTION_BUCKETS for w in text.lower().split() or [""])
        device = self.embed.weight.device
        return self.embed(torch.tensor(ids, device=device), torch.tensor(offsets, device=device))


class ImageEncoder(nn.Module):
    """A timm model (random init, no download) pooled to a feature vector."""

    def __init__(self, name: str, image_size: int):
        super().__init__()
        import timm

        self.net = timm.create_model(name, pretrained=False, num_classes=0)
        self.train()
        with torch.no_grad():
            self.out_dim = self.net(torch.zeros(1, 3, image_size, image_size)).shape[-1]

    def train(self, mode: bool = True):
        """Batch norm always uses its running statistics: a policy's log-probs must not depend on
        which other observations share the batch (rollout batches differ from update batches)."""
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # uint8 [B, h, w, 3]
        x = images.permute(0, 3, 1, 2).float() / 255.0
        return self.net((x - 0.5) / 0.25)


class VLMEncoder(nn.Module):
    """A transformers VLM reading the camera image and the instruction; mean of its last hidden
    states over the prompt (image + text tokens)."""

    def __init__(self, path: str):
        super().__init__()
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

        self.path = path
        self.processor = AutoProcessor.from_pretrained(path)
        local = Path(path)
        if not local.is_dir() or any(local.glob("*.safetensors")) or any(local.glob("*.bin")):  # hub id or checkpoint
            self.net = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
        else:  # saved inside a FlowActionModel: weights come with the outer model.safetensors
            self.net = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(path))
        self.out_dim = self.net.config.get_text_config().hidden_size

    def forward(self, images: torch.Tensor, instructions: list[str]) -> torch.Tensor:
        from PIL import Image

        message = lambda text: [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]  # noqa: E731
        texts = [self.processor.apply_chat_template(message(t), add_generation_prompt=True, tokenize=False)
                 for t in instructions]
        pil = [Image.fromarray(i) for i in images.cpu().numpy()]
        enc = self.processor(text=texts, images=pil, return_tensors="pt", padding=True).to(images.device)
        hidden = self.net(**enc, output_hidden_states=True).hidden_states[-1]
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1)


def time_embedding(t: torch.Tensor, dim: int = 32) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=t.device, dtype=t.dtype) / half)
    angles = t[:, None] * freqs[None] * 100
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class FlowActionModel(nn.Module):
    """Encoder + action expert. ``config`` keys: state_dim, action_dim, backbone, vlm, hidden,
    action_horizon, image_size, noise_std_range, detach_critic, and optionally state_mean and state_std
    (the state is standardised by them before the encoder)."""

    # the methods policies call instead of forward: a sharded model gathers its weights around each
    sharded_methods = ("encode", "velocity_and_hidden", "noise_std", "value")

    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)
        c = self.config
        hidden, self.horizon, self.action_dim = c["hidden"], c["action_horizon"], c["action_dim"]
        self.instruction = InstructionEncoder(64)
        features = c["state_dim"]
        self.image, self.vlm = None, None
        if c["backbone"].startswith("timm:"):
            self.image = ImageEncoder(c["backbone"].split(":", 1)[1], c["image_size"])
            features += self.image.out_dim
        elif c["backbone"] == "vlm":
            self.vlm = VLMEncoder(c["vlm"])
            features += self.vlm.out_dim
        self.observation = mlp([features, hidden, hidden])
        # FiLM (as RT-1): the instruction scales and shifts the observation features, so "which
        # target" is a multiplicative choice, which a plain MLP on concatenated inputs learns slowly
        self.film = nn.Linear(64, 2 * hidden)
        self.context = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden))
        chunk = self.horizon * self.action_dim
        self.expert = mlp([chunk + 32 + hidden, hidden, hidden, hidden])
        self.velocity = nn.Linear(hidden, chunk)
        self.noise_head = mlp([hidden, 64, chunk], activation=nn.Tanh)
        with torch.no_grad():  # start near the middle of the std range (ReinFlow / RLinf init)
            self.noise_head[-1].weight.mul_(0.1)
            self.noise_head[-1].bias.zero_()
        self.value_head = mlp([hidden, hidden // 2, 1])
        self.normalize = "state_mean" in c  # the statistics live in the config, saved with it
        if self.normalize:
            self.register_buffer("state_mean", torch.tensor(c["state_mean"]), persistent=False)
            self.register_buffer("state_std", torch.tensor(c["state_std"]), persistent=False)

    def encode(self, obs: dict) -> torch.Tensor:
        """[B, hidden] context from ``state`` [B, D], ``instruction`` list and ``image`` [B, h, w, 3]."""
        state = obs["state"]
        parts = [(state - self.state_mean.to(state.dtype)) / self.state_std.to(state.dtype) if self.normalize else state]
        if self.vlm is not None:  # the VLM reads the instruction together with the image
            parts.append(self.vlm(obs["image"], obs["instruction"]))
        elif self.image is not None:
            parts.append(self.image(obs["image"]))
        scale, shift = self.film(self.instruction(obs["instruction"])).chunk(2, dim=-1)
        return self.context(self.observation(torch.cat(parts, dim=-1)) * (1 + scale) + shift)

    def velocity_and_hidden(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor):
        """Velocity [B, H, A] of chunk ``x`` at flow times ``t`` [B], and the expert's features."""
        h = self.expert(torch.cat([x.flatten(1), time_embedding(t), context], dim=-1))
        return self.velocity(h).view_as(x), h

    def noise_std(self, hidden: torch.Tensor) -> torch.Tensor:
        """[B, H, A] Flow-Noise std: log-variance squashed by tanh into the configured std range."""
        low, high = (2 * math.log(s) for s in self.config["noise_std_range"])
        logvar = low + (high - low) * (torch.tanh(self.noise_head(hidden)) + 1) / 2
        return torch.exp(0.5 * logvar).view(-1, self.horizon, self.action_dim)

    def value(self, context: torch.Tensor) -> torch.Tensor:
        return self.value_head(context.detach() if self.config["detach_critic"] else context).squeeze(-1)

    # ------------------------------------------------------------------ persistence

    def save_pretrained(self, path: str | Path) -> None:
        from safetensors.torch import save_model

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        config = dict(self.config)
        if self.vlm is not None:  # the backbone's processor and config travel with the model
            self.vlm.processor.save_pretrained(path / "vlm")
            self.vlm.net.config.save_pretrained(path / "vlm")
            config["vlm"] = "vlm"
        (path / "config.json").write_text(json.dumps({"model_type": "mmpost_flow_action", **config}, indent=1))
        save_model(self, str(path / "model.safetensors"))  # handles tied weights (e.g. a VLM's embeddings)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "FlowActionModel":
        from safetensors.torch import load_model

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a saved FlowActionModel (no config.json)")
        config = json.loads((path / "config.json").read_text())
        if config.pop("model_type", None) != "mmpost_flow_action":
            raise ValueError(f"{path} holds a {config.get('model_type')!r} model, not a flow action model")
        if config.get("backbone") == "vlm" and config.get("vlm") == "vlm":
            config["vlm"] = str(path / "vlm")
        model = cls(config)
        load_model(model, str(path / "model.safetensors"))
        return model


def as_tensor_obs(obs: dict, device, dtype=torch.float32) -> dict:
    """Env observations (numpy or torch) as model inputs on ``device``."""
    out = {"state": torch.as_tensor(np.asarray(obs["state"]) if not torch.is_tensor(obs["state"]) else obs["state"],
                                    dtype=dtype, device=device),
           "instruction": list(obs["instruction"])}
    if obs.get("image") is not None:
        out["image"] = torch.as_tensor(obs["image"], device=device)
    return out
