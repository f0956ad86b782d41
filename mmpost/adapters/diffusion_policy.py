"""``DiffusionPolicy``: a diffusers UNet generating 2x2 multi-view tiles from a description, as a
:class:`Policy`.

An action step is one denoising step; its log-prob is the step's Gaussian transition (DDIM-eta
or Flow-GRPO's SDE) averaged over the image's elements, as DDPO and Flow-GRPO do (a sum would
make the ratio's sensitivity grow with resolution). The whole latent trajectory is stored in the Rollout, so
:meth:`logprobs` recomputes the sampled log-probs exactly; RL trains on a random subset of the
steps of each sample (``timestep_fraction``), the other steps are masked out.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mmpost.algos.diffusion import ddim_transition, flow_sde_transition, gaussian_kl, mean_logprob
from mmpost.distributed import whole_batch_draw
from mmpost.types import Rollout

WORD_BUCKETS = 4096


class WordEncoder(nn.Module):
    """Hashed words -> a sequence of embeddings for the UNet's cross-attention (no tokenizer to
    ship); the empty description is the unconditional input of classifier-free guidance."""

    def __init__(self, dim: int, max_words: int = 16):
        super().__init__()
        self.embed = nn.Embedding(WORD_BUCKETS + 1, dim)  # the last row pads and stands for "no prompt"
        self.max_words = max_words

    def forward(self, texts: list[str]) -> torch.Tensor:
        ids = torch.full((len(texts), self.max_words), WORD_BUCKETS, dtype=torch.long)
        for i, text in enumerate(texts):
            words = [zlib.crc32(w.encode()) % WORD_BUCKETS for w in text.lower().replace(",", " ").split()]
            ids[i, :len(words[:self.max_words])] = torch.tensor(words[:self.max_words], dtype=torch.long)
        return self.embed(ids.to(self.embed.weight.device))


class TileDiffusionModel(nn.Module):
    """A ``UNet2DConditionModel`` over tiles plus the word encoder it is conditioned on.

    Saved as a diffusers UNet directory (``unet/``, loadable by ``UNet2DConditionModel.from_pretrained``)
    plus ``words.safetensors`` and ``config.json``; :meth:`from_pretrained` also takes a bare
    diffusers ``UNet2DConditionModel`` directory (pixel space, 3 channels), whose word encoder then
    starts untrained.
    """

    def __init__(self, config: dict, unet=None):
        super().__init__()
        from diffusers import UNet2DConditionModel

        self.config = {"prediction": "epsilon", **config}
        c = self.config
        if unet is None:
            # attention only at the coarse levels: self-attention there links the four views across the
            # tile, and at 64x64 it would cost most of the step for little gain
            attention = c.get("attention", [False] * (len(c["channels"]) - 2) + [True, True])
            unet = UNet2DConditionModel(
                sample_size=c["tile_size"], in_channels=3, out_channels=3, block_out_channels=tuple(c["channels"]),
                down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
                up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
                cross_attention_dim=c["text_dim"], layers_per_block=1, attention_head_dim=8, norm_num_groups=8)
        self.unet = unet
        self.words = WordEncoder(c["text_dim"])

    def forward(self, x: torch.Tensor, t: torch.Tensor, texts: list[str]) -> torch.Tensor:
        return self.unet(x, t, encoder_hidden_states=self.words(texts)).sample

    def save_pretrained(self, path: str | Path) -> None:
        from safetensors.torch import save_model

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(path / "unet")
        save_model(self.words, str(path / "words.safetensors"))
        (path / "config.json").write_text(json.dumps({"model_type": "mmpost_tile_diffusion", **self.config}, indent=1))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "TileDiffusionModel":
        from diffusers import UNet2DConditionModel
        from safetensors.torch import load_model

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: not a saved model directory (no config.json)")
        config = json.loads((path / "config.json").read_text())
        if config.get("model_type") != "mmpost_tile_diffusion":  # a bare diffusers UNet directory
            unet = UNet2DConditionModel.from_pretrained(path)
            if unet.config.in_channels != 3 or unet.config.out_channels != 3:
                raise ValueError(f"{path}: a latent-space UNet ({unet.config.in_channels} channels); the tile policy "
                                 "denoises RGB pixels and has no VAE")
            print(f"{path}: diffusers UNet loaded; its word encoder starts untrained (fine-tune with SFT first)")
            # a UNet does not record its parameterisation (its scheduler does): DDPM's epsilon assumed
            return cls({"tile_size": unet.config.sample_size, "text_dim": unet.config.cross_attention_dim,
                        "prediction": "epsilon"}, unet=unet)
        config.pop("model_type")
        model = cls(config, unet=UNet2DConditionModel.from_pretrained(path / "unet"))
        load_model(model.words, str(path / "words.safetensors"))
        return model


@dataclass
class DiffusionActions:
    """The stored trajectory: latents at every step (noise first) and each sample's prompt."""

    latents: torch.Tensor  # [N, K + 1, 3, S, S]
    texts: list[str]

    def __getitem__(self, index: torch.Tensor) -> "DiffusionActions":
        return DiffusionActions(self.latents[index], [self.texts[i] for i in index.tolist()])


class DiffusionPolicy:
    """Sampling with per-step log-probs, classifier-free guidance, denoising SFT.

    Two samplers, each a Gaussian transition per step (:mod:`mmpost.algos.diffusion`):
    ``"ddim"`` (DDPO / Carve3D: an epsilon- or v-predicting model, DDIM with ``eta`` > 0 on Stable
    Diffusion's schedule) and ``"flow_sde"`` (Flow-GRPO: a velocity-predicting flow-matching model,
    sampled by the SDE with the same marginals as its ODE, noise scale ``noise_level``). The model's
    training objective must match: its config records ``prediction`` (DDIM: "epsilon", or
    "v_prediction", which new models learn since it denoised far better at this size; flow: "velocity").

    Args:
        model: a :class:`TileDiffusionModel`.
        sampler: ``"ddim"`` or ``"flow_sde"``.
        steps: denoising steps per sample; eta: DDIM's noise (> 0 for RL: eta 0 has no density).
        noise_level: Flow-GRPO's ``a`` in ``sigma_s = a sqrt(s / (1 - s))``.
        guidance: classifier-free guidance scale (1 = off).
        timestep_fraction: fraction of each sample's steps trained on (DDPO).
    """

    PREDICTION = {"ddim": "v_prediction", "flow_sde": "velocity"}  # what a new model for each sampler learns
    ACCEPTS = {"ddim": ("epsilon", "v_prediction"), "flow_sde": ("velocity",)}

    def __init__(self, model: TileDiffusionModel, sampler: str = "ddim", steps: int = 10, eta: float = 1.0,
                 noise_level: float = 0.7, guidance: float = 1.0, timestep_fraction: float = 0.5, device="cpu"):
        from diffusers import DDIMScheduler

        if sampler not in self.PREDICTION:
            raise ValueError(f"sampler must be 'ddim' or 'flow_sde', got {sampler!r}")
        self.prediction = model.config.get("prediction", "epsilon")
        if self.prediction not in self.ACCEPTS[sampler]:
            raise ValueError(f"sampler {sampler!r} needs a model predicting {' or '.join(self.ACCEPTS[sampler])}; "
                             f"this one predicts {self.prediction}")
        self.model, self.sampler, self.steps, self.eta, self.guidance = model, sampler, steps, eta, guidance
        self.noise_level, self.timestep_fraction, self.device = noise_level, timestep_fraction, torch.device(device)
        if sampler == "flow_sde":  # x_s = (1 - s) x0 + s noise, from s = 1 to 0 on a uniform grid
            self.sigmas = torch.linspace(1, 0, steps + 1)
            self.timesteps = self.sigmas[:-1] * 1000  # the UNet's time input
            return
        # Stable Diffusion's schedule (which DDPO uses): with set_alpha_to_one=False and steps_offset=1
        # the last step (t=1 -> alpha_0) keeps a non-zero std, so every step has a density
        self.scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                                       beta_end=0.012, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
        self.scheduler.set_timesteps(steps)
        self.timesteps = self.scheduler.timesteps.clone()  # [K], descending
        alphas = self.scheduler.alphas_cumprod
        self.alpha = alphas[self.timesteps]
        previous = self.timesteps - 1000 // steps
        self.alpha_prev = torch.where(previous >= 0, alphas[previous.clamp(min=0)], self.scheduler.final_alpha_cumprod)

    def _predict(self, x: torch.Tensor, t: torch.Tensor, texts: list[str]) -> torch.Tensor:
        if self.guidance == 1.0:
            return self.model(x, t, texts)
        both = self.model(torch.cat([x, x]), torch.cat([t, t]), texts + [""] * len(texts))
        cond, uncond = both.chunk(2)
        return uncond + self.guidance * (cond - uncond)

    def _transition(self, x: torch.Tensor, steps: torch.Tensor, texts: list[str], noisy: bool = True):
        """(mean, std) of the step-``steps`` transitions ([B] step indices) from latents ``x``."""
        out = self._predict(x, self.timesteps[steps].to(x), texts)
        if self.sampler == "flow_sde":
            view = lambda v: v[steps].to(x).view(-1, 1, 1, 1)  # noqa: E731
            return flow_sde_transition(out, x, view(self.sigmas), view(self.sigmas[1:]),
                                       self.noise_level if noisy else 0.0, sigma_one=float(self.sigmas[1]))
        a_t, a_prev = (v[steps].to(x).view(-1, 1, 1, 1) for v in (self.alpha, self.alpha_prev))
        if self.prediction == "v_prediction":  # v = sqrt(a) eps - sqrt(1 - a) x0  =>  eps = sqrt(a) v + sqrt(1 - a) x
            out = a_t.sqrt() * out + (1 - a_t).sqrt() * x
        return ddim_transition(out, x, a_t, a_prev, self.eta if noisy else 0.0)

    @torch.no_grad()
    def rollout(self, batch: list[dict], n: int, *, temperature: float = 1.0, greedy: bool = False) -> Rollout:
        """``n`` tiles per row's ``description``; ``greedy`` = the deterministic sampler (DDIM eta 0,
        or the flow ODE), whose steps have no density (log-probs 0), started from noise drawn from
        each row's ``seed`` when rows have one."""
        texts = [row["description"] for row in batch for _ in range(n)]
        size = self.model.config["tile_size"]
        dtype = next(self.model.parameters()).dtype
        if greedy and all("seed" in row for row in batch):  # each row's own noise: before/after runs are paired
            x = torch.stack([torch.randn(3, size, size, generator=torch.Generator().manual_seed(int(row["seed"])))
                             for row in batch for _ in range(n)]).to(self.device, dtype)
        else:
            x = torch.randn(len(texts), 3, size, size, device=self.device, dtype=dtype)
        latents, logps = [x], []
        for k in range(self.steps):
            mean, std = self._transition(x, torch.full((len(texts),), k), texts, noisy=not greedy)
            x = mean + std * torch.randn_like(x)
            logps.append(torch.zeros(len(texts), dtype=x.dtype) if greedy else mean_logprob(x, mean, std).cpu())
            latents.append(x)
        mask = torch.zeros(len(texts), self.steps)
        chosen = max(1, round(self.timestep_fraction * self.steps))
        for i in range(len(texts)):  # DDPO trains each sample on a random subset of its steps
            mask[i, torch.randperm(self.steps)[:chosen]] = 1.0
        images = ((x.clamp(-1, 1) + 1) / 2).cpu()
        return Rollout(logprobs=torch.stack(logps, 1), mask=mask,
                       group=torch.arange(len(batch)).repeat_interleave(n), outputs=list(images), prompts=texts,
                       columns={k: [row[k] for row in batch for _ in range(n)] for k in batch[0] if k != "tile"},
                       actions=DiffusionActions(torch.stack(latents, 1).cpu(), texts), temperature=temperature)

    def _stored_steps(self, rollout: Rollout):
        """The masked (trained) steps of a rollout: row and step indices, the latents they start
        from and end at, and their prompts."""
        actions: DiffusionActions = rollout.actions
        rows, steps = rollout.mask.nonzero(as_tuple=True)
        x = actions.latents[rows, steps].to(self.device)
        target = actions.latents[rows, steps + 1].to(self.device)
        return rows, steps, x, target, [actions.texts[i] for i in rows.tolist()]

    def _per_step(self, rollout: Rollout, rows, steps, values: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(rollout.mask.shape, device=self.device, dtype=values.dtype)
        out[rows.to(self.device), steps.to(self.device)] = values
        return out

    def logprobs(self, rollout: Rollout) -> torch.Tensor:
        """[N, K] log-probs of the stored transitions under the current parameters (masked steps only)."""
        rows, steps, x, target, texts = self._stored_steps(rollout)
        mean, std = self._transition(x, steps, texts)
        return self._per_step(rollout, rows, steps, mean_logprob(target, mean, std))

    def logprobs_and_kl(self, rollout: Rollout, reference: "DiffusionPolicy") -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`logprobs` plus the per-step KL to ``reference`` in closed form (Flow-GRPO), from the
        same forward: both transitions are Gaussians with the same std, so
        ``KL = mean_elements (mu - mu_ref)^2 / (2 std^2)``. Both [N, K], differentiable in this
        policy's parameters only (masked steps; others 0)."""
        rows, steps, x, target, texts = self._stored_steps(rollout)
        mean, std = self._transition(x, steps, texts)
        with torch.no_grad():
            ref_mean, _ = reference._transition(x, steps, texts)
        return (self._per_step(rollout, rows, steps, mean_logprob(target, mean, std)),
                self._per_step(rollout, rows, steps, gaussian_kl(mean, ref_mean, std)))

    def sft_loss(self, batch: list[dict], uncond_fraction: float = 0.1) -> tuple[torch.Tensor, dict]:
        """Denoising (epsilon) regression on the rows' rendered tiles (``tile`` in [0, 1]);
        descriptions dropped with ``uncond_fraction`` so guidance has an unconditional model."""
        x0 = torch.stack([row["tile"] for row in batch]).to(self.device) * 2 - 1
        B, device = len(batch), self.device  # each draw: this process's rows of the whole batch's draws
        noise = whole_batch_draw(lambda shape: torch.randn(shape, device=device, dtype=x0.dtype), B, *x0.shape[1:])
        dropped = whole_batch_draw(lambda shape: torch.stack([torch.rand(()) for _ in range(shape[0])]), B)
        texts = [row["description"] if u >= uncond_fraction else "" for row, u in zip(batch, dropped)]
        if self.sampler == "flow_sde":  # flow matching: velocity of the straight path noise -> image
            s = whole_batch_draw(lambda shape: torch.rand(shape, device=device), B)
            x_s = (1 - s.view(-1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1) * noise
            loss = ((self.model(x_s, s * 1000, texts) - (noise - x0)) ** 2).mean()
        else:
            t = whole_batch_draw(lambda shape: torch.randint(0, 1000, shape, device=device), B)
            target = self.scheduler.get_velocity(x0, noise, t) if self.prediction == "v_prediction" else noise
            loss = ((self.model(self.scheduler.add_noise(x0, noise, t), t, texts) - target) ** 2).mean()
        return loss, {"samples": float(len(batch))}


    def save(self, path: Path) -> None:
        self.model.save_pretrained(path)

    def close(self) -> None:
        pass
