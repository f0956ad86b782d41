"""The data every stage, reward and loss term speaks: :class:`Rollout`.

Shapes: ``N`` outputs (prompts x group size, or episodes), ``T`` action steps per output. An
action step is a generated token for a language model, one denoising step for a diffusion model,
one action chunk (or one element of it) for a robot policy.

Episodes in an environment also carry per-*transition* data for critic-based advantages: ``C``
transitions (executed action chunks) per episode, with the action steps of a transition stored
contiguously, so ``T = C * steps_per_transition`` (1 for chunk-level ratios).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch

# Row fields that are model inputs or the demonstration, not dataset columns passed to rewards.
MEDIA_AND_TEXT = ("prompt", "images", "videos", "audios", "completion")


@dataclass
class Rollout:
    """Sampled outputs with the per-step log-probabilities of the policy that sampled them."""

    logprobs: torch.Tensor  # [N, T] log-prob of each action step under the sampling policy
    mask: torch.Tensor  # [N, T] 1.0 for real action steps, 0.0 for padding
    group: torch.Tensor  # [N] id of the prompt / initial state each output was sampled from
    outputs: list  # [N] decoded outputs for reward functions (texts, images, trajectories)
    prompts: list  # [N] the prompt of each output (TRL reward argument)
    columns: dict[str, list]  # dataset columns, one value per output (TRL reward kwargs)
    actions: Any  # policy-private record from which `policy.logprobs` recomputes `logprobs`
    temperature: float = 1.0
    ref_logprobs: torch.Tensor | None = None  # [N, T] under the frozen reference (KL on only)
    rewards: torch.Tensor | None = None  # [N] weighted sum of reward functions (NaN: unscorable)
    reward_components: dict[str, list] = field(default_factory=dict)  # name -> [N] floats or None
    advantages: torch.Tensor | None = None  # [N] per output or [N, T] per action step
    step_rewards: torch.Tensor | None = None  # [N, C] env reward of each transition (env rollouts)
    values: torch.Tensor | None = None  # [N, C] critic value at sampling time (critic on only)
    bootstrap: torch.Tensor | None = None  # [N] value after the last transition (0 if terminated)
    alive: torch.Tensor | None = None  # [N, C] 1.0 for real transitions
    returns: torch.Tensor | None = None  # [N, C] critic targets (GAE advantages + values)
    truncated: torch.Tensor | None = None  # [N] bool: cut at the length limit (token policies)
    off_policy: torch.Tensor | None = None  # [N] bool: not sampled from the policy (a demonstration in its group)
    metrics: dict = field(default_factory=dict)  # sampling statistics for the log (times, success)

    def __post_init__(self):
        n = self.logprobs.shape[0]
        if self.mask.shape != self.logprobs.shape:
            raise ValueError(f"mask {tuple(self.mask.shape)} != logprobs {tuple(self.logprobs.shape)}")
        if self.group.shape != (n,) or len(self.outputs) != n or len(self.prompts) != n:
            raise ValueError("group, outputs and prompts must have one entry per output")
        for name, values in self.columns.items():
            if len(values) != n:
                raise ValueError(f"column {name!r} has {len(values)} values for {n} outputs")

    def __len__(self) -> int:
        return self.logprobs.shape[0]

    @property
    def num_steps(self) -> torch.Tensor:
        """[N] number of real action steps of each output."""
        return self.mask.sum(-1)

    @staticmethod
    def concat(parts: list["Rollout"]) -> "Rollout":
        """Outputs of several rollouts of the same policy kind as one (steps padded to the longest);
        ``actions`` must support ``concat`` too. Used to add demonstrations to sampled groups."""
        width = max(p.mask.shape[1] for p in parts)
        pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1])) if t.dim() == 2 else t  # noqa: E731
        values = {}
        for f in fields(Rollout):
            items = [getattr(p, f.name) for p in parts]
            if f.name == "temperature":
                values[f.name] = items[0]
            elif f.name == "metrics":
                values[f.name] = _merged_metrics(parts)
            elif all(isinstance(v, torch.Tensor) for v in items):
                values[f.name] = torch.cat([pad(v) for v in items])
            elif all(v is None for v in items):
                values[f.name] = None
            elif f.name in ("outputs", "prompts"):
                values[f.name] = [x for v in items for x in v]
            elif f.name in ("columns", "reward_components"):
                values[f.name] = {k: [x for v in items for x in v[k]] for k in items[0]}
            elif f.name == "actions":
                values[f.name] = type(items[0]).concat(items)
            else:
                raise ValueError(f"cannot concatenate rollouts: {f.name!r} is set on only some of them")
        return Rollout(**values)

    def subset(self, index: torch.Tensor) -> "Rollout":
        """The rollout restricted to outputs ``index`` (for minibatches); ``actions`` must be indexable."""
        values = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                value = value[index]
            elif f.name in ("outputs", "prompts"):
                value = [value[i] for i in index.tolist()]
            elif f.name in ("columns", "reward_components"):
                value = {k: [v[i] for i in index.tolist()] for k, v in value.items()}
            elif f.name == "actions":
                value = value[index]
            elif f.name == "metrics":
                value = dict(value)
            values[f.name] = value
        return Rollout(**values)


# What a task is: a registered class with these members (``mmpost.tasks`` has eight examples).
#     name: str, metric: str (a reward name), rewards: tuple of reward names,
#     default_config() -> TrainConfig, __init__(cfg, reward), rows(split) -> list[dict],
#     policy(device="cpu") -> a Policy
# and, optionally, the members below; a task that leaves one out gets its default here.
TASK_OPTIONAL = {
    "policy_kind": "token",  # "token" | "flow" | "diffusion": capabilities are checked against it before building
    "recipes": {},  # name -> dotted overrides of the default config (the task's own methods)
    "eval_rewards": (),  # rewards held-out evaluation also reports (e.g. a check that images still show the object)
    "breakdown": "",  # a row column the held-out metric is also reported by
    "solved_threshold": 1.0,  # the reward at which a sample counts as solved (ReLIFT, rft, FAIT recipes)
    "abilities": (),  # (specialist split, general split) for DMT
    "refine": None,  # refine(row, axis, rng) -> row: the task's rule-based row rewriter (Middo)
    "blind_completions": None,  # blind_completions(train_rows, heldout_rows) -> answers a model without input would give
    "answer_only": None,  # answer_only(row) -> row: its demonstration without the reasoning (rows.answer_only)
    "ood": "",  # what rows("ood") holds: held-out rows outside the training distribution ("" = no such split)
    "default_model": "the task's default model",  # what the task builds when --model is not given
    "builtin_models": (),  # --model names the task builds offline itself ("tiny-qwen2vl"; "composed:" = a prefix)
}


def task_member(task, name: str):
    """An optional member of a task (class or instance), or its default in :data:`TASK_OPTIONAL`."""
    return getattr(task, name, TASK_OPTIONAL[name])


class StageSection:
    """What a section of a stage's config (:mod:`mmpost.stages.spec`) answers, with the defaults of a
    section that needs nothing: cross-field rules against its ``stage`` (``check`` raises
    ``ValueError``), whether a term reads the frozen start-of-stage model, and the policy
    capabilities it needs as ``(Protocol, the knob that needs it)``."""

    def __post_init__(self):
        """Validate this section's own fields (raise ``ValueError`` naming ``section.field``)."""

    def check(self, stage) -> None:
        """Raise ``ValueError`` when this section's knobs contradict the rest of ``stage``."""

    def needs_reference(self, stage) -> bool:
        return False

    def requires(self, stage) -> list[tuple[type, str]]:
        return []


# rollout metrics that are totals over a rollout's outputs, or running counts; all others are means over them
_TOTALS = ("time/", "env/steps")
_RUNNING_COUNTS = ("env/worker_restarts",)


def _merged_metrics(parts: list[Rollout]) -> dict[str, float]:
    """The metrics of rollouts made in parts (calls of one step, sampled groups and demonstrations) as
    one rollout's: times and step counts add up, running counts keep the latest, means are weighted by
    the outputs of the parts that report them."""
    merged = {}
    for key in dict.fromkeys(k for p in parts for k in p.metrics):
        having = [p for p in parts if key in p.metrics]
        if key.startswith(_TOTALS):
            merged[key] = sum(p.metrics[key] for p in having)
        elif key in _RUNNING_COUNTS:
            merged[key] = max(p.metrics[key] for p in having)
        else:
            merged[key] = sum(p.metrics[key] * len(p) for p in having) / max(1, sum(len(p) for p in having))
    return merged
