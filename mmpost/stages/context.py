"""What a stage's step function gets: the policy, its reference, the rows, rewards and one optimiser."""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from mmpost.sharding import full

if TYPE_CHECKING:
    from mmpost.stages.spec import Stage

log = logging.getLogger(__name__)


@dataclass
class StageContext:
    """Everything one step of a stage needs; the trainer loop owns it and checkpoints ``state``."""

    stage: Stage
    policy: Any
    reference: Any  # frozen copy of the policy at the start of the stage (None when no term needs it)
    rows: list  # the stage's data rows; steps receive indices into them
    rewards: dict  # name -> reward function
    weights: dict  # name -> weight
    accelerator: Any
    optimizer: Any
    scheduler: Any
    params: list
    state: dict = field(default_factory=dict)  # per-stage state that must survive a resume (saved in checkpoints)
    step: int = 0  # 0-based index of the current step within the stage
    steps: int = 1  # steps in the stage (for schedules over the stage)
    demo_rows: list | None = None  # rows of ``stage.demos.data`` when the demonstrations live apart
    max_nonfinite_steps: int = 10  # consecutive NaN/inf losses or gradients before the run stops
    seed: int = 0  # the run's seed and this stage's index: with ``step``, the position that seeds sampling
    stage_index: int = 0
    refine: Any = None  # the task's rule-based row rewriter ``refine(row, axis, rng)``, if it has one (Middo)
    models: dict = field(default_factory=dict)  # frozen models a term loads by path (PoFT's references): never checkpointed

    def batch(self, indices: list[int]) -> list[dict]:
        """The rows at ``indices``: of the stage's rows, or of the refined dataset once a Middo round
        has replaced them (``state["refined_rows"]``: indices into ``rows`` or rewritten rows)."""
        refined = self.state.get("refined_rows")
        if refined is None:
            return [self.rows[i] for i in indices]
        return [self.rows[e] if isinstance(e, int) else e for e in (refined[i] for i in indices)]

    def demo_batch(self, indices: list[int]) -> list[dict]:
        """Demonstrations for a step: the rows themselves, or as many rows drawn from ``demo_rows``
        (with the checkpointed torch RNG, so a resumed run draws the same ones)."""
        if self.demo_rows is None:
            return self.batch(indices)
        return [self.demo_rows[i] for i in torch.randint(len(self.demo_rows), (len(indices),)).tolist()]

    def update(self, loss: torch.Tensor | None, advance_schedule: bool = True) -> float:
        """One optimiser step on ``loss``; returns the gradient norm before clipping. ``None`` (nothing to
        learn from this batch) or a non-finite loss or gradient skips the step (NaN is logged) rather
        than poisoning the weights; the learning-rate schedule advances either way, unless the update
        is an extra one the schedule did not plan for (``advance_schedule=False``)."""
        return self.apply(loss, self.backward(loss), advance_schedule)

    def backward(self, loss: torch.Tensor | None) -> float:
        """Gradients of ``loss`` (clipped to ``max_grad_norm``); their norm before clipping, NaN when
        there is no finite loss. :meth:`apply` then steps or skips."""
        if loss is None or not bool(torch.isfinite(loss)):
            return math.nan
        self.accelerator.backward(loss)
        norm = self.accelerator.clip_grad_norm_(self.params, self.stage.optim.max_grad_norm)
        return float(full(norm))  # (a sharded model's norm is a DTensor)

    def apply(self, loss: torch.Tensor | None, grad_norm: float, advance_schedule: bool = True) -> float:
        """The optimiser step on the gradients :meth:`backward` left (skipped when ``grad_norm`` is
        not finite), then the schedule; returns ``grad_norm``."""
        finite_loss = loss is None or bool(torch.isfinite(loss))
        if math.isfinite(grad_norm):
            self.optimizer.step()
            self.state["nonfinite_in_a_row"] = 0
        elif loss is not None:  # NaN/inf loss or gradient: skipped, counted, fatal when it persists
            bad = self.state.get("nonfinite_in_a_row", 0) + 1
            self.state["nonfinite_in_a_row"] = bad
            self.state["nonfinite_total"] = self.state.get("nonfinite_total", 0) + 1
            what = "gradient" if finite_loss else "loss"
            log.warning("stage %s step %d: non-finite %s, update skipped (%d in a row)", self.stage.name,
                        self.step + 1, what, bad)
            if bad >= self.max_nonfinite_steps:
                self.optimizer.zero_grad(set_to_none=True)
                raise FloatingPointError(
                    f"stage {self.stage.name!r}: non-finite {what} for {bad} updates in a row (last at step "
                    f"{self.step + 1}); stopping. Lower the learning rate, check the rewards and data, or resume "
                    f"from the last checkpoint (max_nonfinite_steps={self.max_nonfinite_steps})")
        if advance_schedule:  # a skipped update still advances the schedule, on purpose: silence torch's warning
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
                self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm
