"""The modality-adapter boundary: the engine only ever talks to a :class:`Policy`."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from mmpost.types import Rollout


@contextmanager
def eval_mode(model: torch.nn.Module):
    """``model`` in eval mode (dropout off) inside the block; its previous mode back after, also when
    the block raises."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@runtime_checkable
class Policy(Protocol):
    """What every trainable thing provides (token LMs/VLMs, flow-matching robot policies, diffusion).

    ``batch`` is a list of dataset rows (dicts). Log-probs are per *action step* (see
    :mod:`mmpost.types`), so the same loss terms apply to every policy kind.
    """

    model: torch.nn.Module

    def rollout(self, batch: list[dict], n: int, *, temperature: float = 1.0, greedy: bool = False) -> Rollout:
        """Sample ``n`` outputs per row, recording each action step's log-prob while sampling."""

    def logprobs(self, rollout: Rollout) -> torch.Tensor:
        """[N, T] log-probs of the rollout's action steps under the current parameters (with grad)."""

    def sft_loss(self, batch: list[dict]) -> tuple[torch.Tensor, dict[str, float]]:
        """The supervised loss on the rows' demonstrations (token NLL; flow-matching or denoising
        regression) and metrics (``tokens`` or ``samples`` seen)."""

    def save(self, path: Path) -> None:
        """Write a directory loadable with the family's ``from_pretrained``."""

    def close(self) -> None:
        """Release what the policy holds besides the model (simulators, worker processes)."""


# Capabilities beyond :class:`Policy`. A term that needs one declares it (``requires`` of a stage's
# config section, :mod:`mmpost.stages.spec`); :func:`missing_capabilities` checks them all in one place,
# against the task's policy class before any model is built.


@runtime_checkable
class TokenDemos(Protocol):
    """Demonstrations as token sequences: token-weighted SFT terms, preference pairs, rejection
    sampling, the demonstration inside an RL group and the data hooks that score rows (token LMs/VLMs)."""

    def demo_tokens(self, batch: list[dict], field: str = "completion") -> tuple[torch.Tensor, torch.Tensor]:
        """``([B, T] ids, [B, T] mask)`` of each row's ``field`` text followed by EOS, right-padded;
        the mask from the lengths (the EOS counts even when the tokenizer pads with it)."""

    def demo_logprobs(self, batch: list[dict], return_logits: bool = False):
        """``([B, T] log-probs, [B, T] mask)`` of the rows' demonstrations, teacher-forced (with grad),
        plus the [B, T, V] logits with ``return_logits``."""

    def demo_rollout(self, batch: list[dict], field: str = "completion", temperature: float = 1.0) -> Rollout:
        """The rows' ``field`` texts as a one-output-per-row :class:`Rollout` scored by the current model."""

    def ift_demo_logprobs(self, batch: list[dict], lam: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
        """IFT's log-probs of the demonstrations with inputs blended with the model's own predictions."""

    def demo_prompt_attention(self, batch: list[dict]) -> torch.Tensor:
        """[B, T] last-layer attention of each demonstrated token's position on the prompt (ssToken)."""

    def token_lines(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, T] the text line each token is on (FAIT's line-level differences)."""

    def prompt_embeddings(self, batch: list[dict]) -> torch.Tensor:
        """[B, D] mean last-layer hidden state of each prompt (Middo)."""

    def demo_hidden_states(self, batch: list[dict]):
        """``(hidden, logits, ids, mask)`` at each demonstrated token (DONOD)."""


@runtime_checkable
class Critic(Protocol):
    """A value head, for critic-based advantages (``advantage.estimator: gae``)."""

    def enable_value_head(self) -> None:
        """Attach the value head if the model has none (before wrapping and before weights load)."""

    def values(self, rollout: Rollout) -> torch.Tensor:
        """[N, C] the value head's estimate of each transition's start state (with grad)."""


@runtime_checkable
class GaussianKL(Protocol):
    """Gaussian transitions: the exact KL to a reference (``kl.estimator: closed_form``)."""

    def logprobs_and_kl(self, rollout: Rollout, reference) -> tuple[torch.Tensor, torch.Tensor]:
        """[N, T] log-probs (with grad) and [N, T] exact per-step KL to ``reference``."""


@runtime_checkable
class PrefixSampler(Protocol):
    """Samples that continue a demonstration prefix (Prefix-RFT's hybrid group members)."""

    def prefixed_rollout(self, batch: list[dict], n: int, ratio: float, *, temperature: float = 1.0,
                         entropy_top: float = 0.2) -> Rollout:
        """``n`` outputs per row, each continuing the first ``ratio`` of its demonstration."""


@runtime_checkable
class VLLMSampling(Protocol):
    """Sampling through a colocated vLLM engine (``rollout.backend: vllm``)."""

    def use_vllm(self, config, *, seed: int = 0) -> None:
        """Sample with a vLLM engine from now on, sent the current weights before every rollout."""


@runtime_checkable
class GenerationLength(Protocol):
    """Completions of a variable length, capped per stage (token policies)."""

    def set_generation_length(self, max_new_tokens: int) -> None:
        """Cap each sampled completion at ``max_new_tokens``."""


@runtime_checkable
class ImageResizing(Protocol):
    """Images resized to a pixel budget before the processor (``image_pixels``)."""

    def set_image_pixels(self, pixels: int) -> None:
        """Resize every image to about ``pixels`` pixels."""


@runtime_checkable
class NextTokenChoice(Protocol):
    """Scores of a few words as the next token after each prompt (a reranker's yes / no)."""

    def choice_logits(self, batch: list[dict], words: tuple[str, ...]) -> torch.Tensor:
        """[B, len(words)] logits (with grad) of each word's first token after each row's prompt."""


WHAT_PROVIDES = {  # each capability in a user's words, for the error that names a missing one
    TokenDemos: "a token policy (demonstrations as token sequences)",
    Critic: "a policy with a value head (Critic)",
    GaussianKL: "a policy with Gaussian transitions (GaussianKL: use kl.estimator=k3)",
    PrefixSampler: "a token policy that continues demonstration prefixes (PrefixSampler)",
    VLLMSampling: "a token policy (vLLM samples token models)",
    GenerationLength: "a token policy (a completion length cap)",
    ImageResizing: "a policy with an image processor",
    NextTokenChoice: "a token policy (yes / no as next-token logits)",
}

# The policy class behind each task ``policy_kind``, so capabilities are checked before any model is built.
POLICY_CLASSES = {"token": "mmpost.adapters.token_policy:TokenPolicy",
                  "flow": "mmpost.adapters.flow_policy:FlowActionPolicy",
                  "diffusion": "mmpost.adapters.diffusion_policy:DiffusionPolicy"}


def policy_class(kind: str) -> type:
    """The class that implements policies of ``kind`` (imported on first use)."""
    import importlib

    if kind not in POLICY_CLASSES:
        raise ValueError(f"unknown policy kind {kind!r}; expected one of {', '.join(POLICY_CLASSES)}")
    module, name = POLICY_CLASSES[kind].split(":")
    return getattr(importlib.import_module(module), name)


def missing_capabilities(requirements: list[tuple[type, str]], policy: type | object) -> list[str]:
    """For each ``(capability Protocol, what needs it)`` in ``requirements`` that ``policy``, a policy or
    its class, does not provide: "WHAT needs A KIND OF POLICY"."""
    check = issubclass if isinstance(policy, type) else isinstance
    return [f"{reason} needs {WHAT_PROVIDES[capability]}" for capability, reason in requirements
            if not check(policy, capability)]


def check_capabilities(cfg, policy: type | object) -> None:
    """Fail, naming every knob, when ``cfg`` (a :class:`~mmpost.config.TrainConfig`) switches on terms
    that ``policy`` (a policy or its class) cannot compute: the one check of what a run needs from its
    policy (:meth:`~mmpost.config.TrainConfig.requirements` against the Protocols above)."""
    missing = missing_capabilities(cfg.requirements(), policy)
    if missing:
        name = (policy if isinstance(policy, type) else type(policy)).__name__
        raise ValueError(f"{'; '.join(missing)}; task {cfg.task!r} trains a {name}. Methods for it: "
                         "`mmpost list recipes`")
