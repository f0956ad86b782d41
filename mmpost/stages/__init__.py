"""Stage kinds: what one optimiser step of each kind does. The trainer loop calls ``STEPS[kind]``.

A method is a recipe over these kinds and the terms they switch on (see :mod:`mmpost.recipes`);
adding a method changes neither the loop nor this table.
"""

from __future__ import annotations

from mmpost.config import Stage
from mmpost.stages.context import StageContext
from mmpost.stages.preference import REFERENCE_FREE, preference_step
from mmpost.stages.rft import rft_step
from mmpost.stages.rl import compute_advantages, rl_step
from mmpost.stages.sft import sft_step

STEPS = {"sft": sft_step, "rl": rl_step, "mixed": rl_step, "dpo": preference_step, "spin": preference_step,
         "rft": rft_step}


def needs_reference(stage: Stage) -> bool:
    """Whether any term of ``stage`` reads the frozen start-of-stage model (only then is it copied)."""
    demo_terms = stage.sft_weight in ("sstoken", "poft") or stage.sft_kl_coef > 0
    if stage.kind == "sft":
        return demo_terms or bool(stage.middo)
    if stage.kind in ("rl", "mixed"):
        demos_inside = stage.kind == "mixed" or stage.relift_size or stage.sasr
        return stage.kl_coef > 0 or bool(demos_inside and demo_terms)
    if stage.kind == "rft":
        return stage.kl_coef > 0 or (stage.rft_demo_fallback and demo_terms)
    if stage.kind == "spin":
        return True
    return stage.preference_loss not in REFERENCE_FREE  # dpo


def updates_per_step(stage: Stage) -> int:
    """Optimiser steps per stage step (for the learning-rate schedule's length)."""
    return stage.epochs * stage.minibatches if stage.kind in ("rl", "mixed") else 1


def token_only_reason(stage: Stage) -> str:
    """Why ``stage`` needs a token policy (demonstrations as token sequences), or ``""``."""
    if stage.kind in ("dpo", "spin", "rft"):
        return f"stage kind {stage.kind!r}"
    if stage.sft_weight != "uniform" or stage.sft_kl_coef:
        return f"sft_weight={stage.sft_weight!r} / sft_kl_coef"
    if stage.select:
        return f"select={stage.select!r}"
    if stage.donod or stage.middo:
        return "donod" if stage.donod else "middo"
    for key in ("demo_in_group", "prefix_samples", "entropy_coef", "mask_truncated"):
        if getattr(stage, key):
            return key
    return ""


__all__ = ["STEPS", "StageContext", "compute_advantages", "needs_reference", "updates_per_step", "token_only_reason"]
