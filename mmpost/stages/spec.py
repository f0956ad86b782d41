"""A stage's configuration: the few fields every kind has, and one typed section per concern.

Each section is defined beside the code that reads it, validates its own fields and declares what it
needs: ``needs_reference(stage)`` (a frozen start-of-stage model) and ``requires(stage)`` (policy
capabilities, the Protocols of :mod:`mmpost.policy`, each with the knob that needs it). A YAML stage
lists them in loop order::

    - name: rl
      kind: rl
      steps: 150
      optim: {lr: 2.0e-5, schedule: constant}
      sampling: {group_size: 8, max_new_tokens: 40}
      filter: {dynamic_sampling: true, mask_truncated: true, overlong: [40, 10]}
      kl: {coef: 0.04}

and ``--set rl.kl.coef=0.04`` addresses the same field. Keys of the earlier flat stage
(``rl.kl_coef``) fail with their new name (:data:`RENAMED`); a ``config.yaml`` saved with them still
loads (:meth:`Stage.from_dict` with ``upgrade=True``).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

from mmpost.data_hooks import Rows
from mmpost.registry import check_choice, closest
from mmpost.stages.preference import Preference
from mmpost.stages.rerank import Rerank
from mmpost.stages.rft import Rejection
from mmpost.stages.rl import KL, Advantage, DemosInRL, GroupFilter, PolicyGradient
from mmpost.stages.sft import DemoLoss
from mmpost.types import StageSection

STAGE_KINDS = ("sft", "rl", "mixed", "dpo", "spin", "rft", "rerank")
SCHEDULES = ("cosine", "linear", "constant")


log = logging.getLogger(__name__)


@dataclass
class Optim(StageSection):
    """AdamW and its learning-rate schedule (read by :mod:`mmpost.engine` and the stage context)."""

    lr: float = 1e-3  # peak learning rate
    schedule: str = "cosine"  # "cosine" | "linear" | "constant", after warm-up
    warmup: float = 0.0  # fraction of steps of linear warm-up
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    max_grad_norm: float = 1.0  # gradients are clipped to this global norm
    value_lr: float = 0.0  # gae: learning rate of the value head (0 = lr)

    def __post_init__(self):
        check_choice("optim.schedule", self.schedule, SCHEDULES)


@dataclass
class Sampling(StageSection):
    """How a stage samples (rl, mixed, dpo, spin, rft; read by the stages' step functions)."""

    group_size: int = 8  # completions per prompt (GRPO group; candidates for pairs / rejection sampling)
    # rl: prompts per generate call (0 = all of this process's prompts). Each call's sampling is seeded
    # by its position, so N processes with batch B/N sample what one process with generation_batch B/N does.
    generation_batch: int = 0
    temperature: float = 1.0  # sampling temperature
    max_new_tokens: int = 72  # generation cap
    target_entropy: float = 0.0  # > 0: adjust the sampling temperature toward this token entropy (AceReason)
    temperature_rate: float = 0.05  # step size of that controller (log T per nat of entropy error)

    def __post_init__(self):
        if self.group_size < 1:
            raise ValueError(f"sampling.group_size must be >= 1, got {self.group_size}")

    def check(self, stage) -> None:
        if stage.kind == "dpo" and self.group_size < 2:
            raise ValueError("dpo builds pairs from sampling.group_size >= 2 samples per prompt")


@dataclass
class Stage:
    """One stage of a recipe: its kind, data and length, and a section per concern."""

    name: str = "sft"  # the stage's name, used in --set NAME.FIELD=VALUE and in logs
    kind: str = "sft"  # see STAGE_KINDS: sft | rl | mixed | dpo | spin | rft | rerank
    data: str = "train"  # the task's row split this stage draws from (e.g. "demos" for a robot's few-shot SFT)
    steps: int = 100  # optimiser steps in this stage
    batch_size: int = 16  # sft: demonstrations per step; rl: prompts per step
    solved_threshold: float = 1.0  # reward at which a sample counts as solved (ReLIFT, rft, FAIT)
    optim: Optim = field(default_factory=Optim)
    sampling: Sampling = field(default_factory=Sampling)
    pg: PolicyGradient = field(default_factory=PolicyGradient)  # rl, mixed
    advantage: Advantage = field(default_factory=Advantage)  # rl, mixed
    filter: GroupFilter = field(default_factory=GroupFilter)  # rl, mixed
    kl: KL = field(default_factory=KL)  # rl, mixed, rft
    demo_loss: DemoLoss = field(default_factory=DemoLoss)  # sft, and demonstrations inside other kinds
    demos: DemosInRL = field(default_factory=DemosInRL)  # rl, mixed
    preference: Preference = field(default_factory=Preference)  # dpo, spin
    rejection: Rejection = field(default_factory=Rejection)  # rft
    rerank: Rerank = field(default_factory=Rerank)  # rerank
    rows: Rows = field(default_factory=Rows)  # data hooks

    def __post_init__(self):
        check_choice(f"stage {self.name!r}: kind", self.kind, STAGE_KINDS)
        if self.steps < 0:
            raise ValueError(f"{self.name}.steps must be >= 0 (0 skips the stage), got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"{self.name}.batch_size must be >= 1, got {self.batch_size}")
        for section in self.sections().values():
            try:
                section.__post_init__()
                section.check(self)
            except ValueError as error:
                raise ValueError(f"stage {self.name!r}: {error}") from None

    def sections(self) -> dict:
        """The typed sections by field name, in loop order."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name in SECTIONS}

    def needs_reference(self) -> bool:
        """Whether any term reads the frozen start-of-stage model (only then is it copied)."""
        return any(section.needs_reference(self) for section in self.sections().values())

    def requirements(self) -> list[tuple[type, str]]:
        """``(capability Protocol, the knob that needs it)`` for every term this stage switches on."""
        return [need for section in self.sections().values() for need in section.requires(self)]

    def trains_on_demos(self) -> bool:
        """Whether the demonstration term (:class:`DemoLoss`) runs in this stage."""
        if self.kind in ("sft", "mixed"):
            return True
        if self.kind == "rl":
            return bool(self.demos.relift_size or self.demos.sasr)
        return self.kind == "rft" and self.rejection.demo_fallback

    def updates_per_step(self) -> int:
        """Optimiser steps per stage step (the learning-rate schedule's length is steps x this)."""
        return self.pg.epochs * self.pg.minibatches if self.kind in ("rl", "mixed") else 1

    @classmethod
    def from_dict(cls, data: dict, where: str = "", upgrade: bool = False) -> "Stage":
        """A stage from nested dicts (a recipe YAML entry, a saved ``config.yaml``). A key of the
        earlier flat stage raises with its new name, or with ``upgrade`` is moved there (resume)."""
        nested, moved = {}, {}
        for key, value in data.items():
            if key in RENAMED and not (key in SECTIONS and isinstance(value, dict)):  # a flat key of old
                if not upgrade:
                    section, name = RENAMED[key].split(".")
                    raise KeyError(f"{where}stage key {key!r} is now {RENAMED[key]!r} "
                                   f"(YAML: {section}: {{{name}: ...}}; --set STAGE.{RENAMED[key]}=...)")
                section, name = RENAMED[key].split(".")
                moved.setdefault(section, {})[name] = value
            else:
                nested[key] = value
        for section, values in moved.items():
            nested[section] = {**values, **nested.get(section, {})}
        valid = [f.name for f in dataclasses.fields(cls)]
        for key in nested:
            if key not in valid:
                raise KeyError(f"{where}unknown stage key {key!r}.{closest(key, valid)} Valid: {', '.join(valid)}")
        for name, section_cls in SECTIONS.items():
            if name in nested:
                nested[name] = _section(name, nested[name], f"{where}{name}", upgrade)
        return cls(**nested)


def _section(name: str, values: dict, where: str, upgrade: bool):
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping of its fields, got {values!r}")
    section_cls = SECTIONS[name]
    valid = [f.name for f in dataclasses.fields(section_cls)]
    values = dict(values)
    for key in list(values):
        if f"{name}.{key}" in RETIRED:
            if not upgrade:
                raise KeyError(f"{where}.{key} is retired: {RETIRED[f'{name}.{key}']}")
            log.warning("%s.%s is retired and ignored (now %s)", where, key, RETIRED[f"{name}.{key}"])
            del values[key]
        elif key not in valid:
            raise KeyError(f"unknown key {where}.{key}.{closest(key, valid)} Valid: {', '.join(valid)}")
    return section_cls(**values)


# Knobs removed when a method was made faithful to its paper: a saved config.yaml that has them still
# loads (they are dropped with a warning); in a recipe or --set they fail with what replaced them.
RETIRED = {"demo_loss.qtuning_quantile": "use demo_loss.qtuning_sample_keep (Q-Tuning's quadrant thresholds are "
                                         "bisected to a share of the batch, as the paper)"}


SECTIONS = {"optim": Optim, "sampling": Sampling, "pg": PolicyGradient, "advantage": Advantage,
            "filter": GroupFilter, "kl": KL, "demo_loss": DemoLoss, "demos": DemosInRL, "preference": Preference,
            "rejection": Rejection, "rerank": Rerank, "rows": Rows}

# Keys of the earlier flat stage -> their place now (error messages, and loading an old config.yaml).
RENAMED = {
    **{k: f"optim.{k}" for k in ("lr", "schedule", "warmup", "weight_decay", "max_grad_norm", "value_lr")},
    **{k: f"sampling.{k}" for k in ("group_size", "generation_batch", "temperature", "max_new_tokens",
                                    "target_entropy", "temperature_rate")},
    **{k: f"pg.{k}" for k in ("clip_low", "clip_high", "ratio_level", "dual_clip", "epochs", "minibatches",
                              "aggregation", "entropy_coef")},
    "advantage": "advantage.estimator", "normalize_advantages": "advantage.normalize",
    **{k: f"advantage.{k}" for k in ("scale_rewards", "gamma", "lam", "value_coef", "value_clip",
                                     "bootstrap_truncated")},
    "dynamic_sampling": "filter.dynamic_sampling", "group_filter": "filter.reward_range",
    "overlong": "filter.overlong", "mask_truncated": "filter.mask_truncated",
    "kl_coef": "kl.coef", "kl_in": "kl.where", "kl_estimator": "kl.estimator",
    "sft_weight": "demo_loss.weight", "sft_kl_coef": "demo_loss.kl_coef",
    **{k: f"demo_loss.{k}" for k in ("sstoken_ratio", "sstoken_gamma", "qtuning_quantile", "qtuning_token_keep",
                                     "otr_candidates", "ift_lambda", "ift_gamma", "fait_alpha")},
    "mu": "demos.mu", "demo_data": "demos.data", "demo_in_group": "demos.in_group",
    **{k: f"demos.{k}" for k in ("prefix_samples", "prefix_ratio", "prefix_entropy_top", "relift_size", "sasr")},
    "preference_loss": "preference.loss",
    **{k: f"preference.{k}" for k in ("beta", "label_smoothing", "rdpo_alpha", "simpo_gamma", "orpo_lambda",
                                      "iteration_steps")},
    "rft_top_k": "rejection.top_k", "rft_demo_fallback": "rejection.demo_fallback",
    **{k: f"rows.{k}" for k in ("mix", "curate", "donod", "select", "select_pool", "middo")},
}
