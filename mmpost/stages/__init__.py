"""Stage kinds: what one optimiser step of each kind does. The trainer loop calls ``STEPS[kind]``.

A method is a recipe over these kinds and the terms they switch on (see :mod:`mmpost.recipes`). A
term's knobs are a section of the stage's config, defined beside the code that reads them
(:mod:`mmpost.stages.spec`), so adding a method changes neither the loop nor this table.
"""

from __future__ import annotations

from mmpost.stages.context import StageContext
from mmpost.stages.preference import preference_step
from mmpost.stages.rerank import rerank_step
from mmpost.stages.rft import rft_step
from mmpost.stages.rl import compute_advantages, rl_step
from mmpost.stages.sft import sft_step
from mmpost.stages.spec import Stage

STEPS = {"sft": sft_step, "rl": rl_step, "mixed": rl_step, "dpo": preference_step, "spin": preference_step,
         "rft": rft_step, "rerank": rerank_step}

__all__ = ["STEPS", "Stage", "StageContext", "compute_advantages"]
