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

    def demo_logprobs(self, batch: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, T] log-probs, [B, T] mask) of the rows' demonstrations, teacher-forced (with grad).
        Token policies only: flow and diffusion policies have no closed-form demo likelihood."""

    def sft_loss(self, batch: list[dict]) -> tuple[torch.Tensor, dict[str, float]]:
        """The supervised loss on the rows' demonstrations (token NLL; flow-matching or denoising
        regression) and metrics (``tokens`` or ``samples`` seen)."""

    def save(self, path: Path) -> None:
        """Write a directory loadable with the family's ``from_pretrained``."""

    def close(self) -> None:
        """Release what the policy holds besides the model (simulators, worker processes)."""


# Optional, for critic-based advantages (``advantage: gae``):
#     values(rollout) -> Tensor[N, C]: the value head's estimate of each transition's start state.
