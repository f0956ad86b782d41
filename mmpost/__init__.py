"""mmpost: post-training (SFT, preference, RL) for multimodal models on one engine.

Public API::

    import mmpost

    @mmpost.reward("count_words")
    def count_words(prompts, completions, **columns):
        return [min(len(c.split()), 50) / 50 for c in completions]

    mmpost.train(task="chart2code", rewards=["chart_render", "count_words"], weights=[1.0, 0.1])

This module stays light (no torch import) so that sandbox workers can import the package.
"""

from __future__ import annotations

from mmpost.registry import REWARDS, TASKS, reward

__version__ = "0.1.0"
__all__ = ["train", "reward", "REWARDS", "TASKS", "build_config"]


def build_config(task: str = "chart2code", *, model: str = "", recipe: str | None = None,
                 rewards: list[str] | None = None, weights: list[float] | None = None,
                 seed: int | None = None, max_steps: int | None = None, output_dir: str | None = None,
                 overrides: dict | None = None):
    """The resolved :class:`~mmpost.config.TrainConfig` for a task plus the given changes."""
    from mmpost.config import apply_overrides, stages_from_yaml

    task_cls = TASKS.get(task)
    cfg = task_cls.default_config()
    named = getattr(task_cls, "recipes", {})
    if recipe in named:  # a task's named recipe: overrides of its default config
        apply_overrides(cfg, dict(named[recipe]))
    elif recipe:
        if not recipe.endswith((".yaml", ".yml")):
            raise ValueError(f"unknown recipe {recipe!r} for task {task!r}: give a YAML file or one of "
                             f"{', '.join(named) or '(none)'}")
        cfg.stages = stages_from_yaml(recipe)
    for key, value in {"model": model or None, "seed": seed, "max_steps": max_steps, "output_dir": output_dir,
                       "rewards": rewards, "reward_weights": weights}.items():
        if value is not None:
            setattr(cfg, key, value)
    apply_overrides(cfg, overrides or {})
    cfg.__post_init__()
    for name in cfg.rewards:
        REWARDS.get(name)  # unknown reward names fail before any work starts
    return cfg


def train(task: str = "chart2code", rewards: list[str] | None = None, weights: list[float] | None = None,
          resume: str | None = None, **overrides) -> dict:
    """Train ``task`` and return its before/after held-out metrics.

    Args:
        task: a registered task name (``mmpost list``).
        rewards: reward names (registered with :func:`reward` or built in); default: the task's.
        weights: one weight per reward (default 1.0 each).
        resume: a run directory to continue from its last checkpoint.
        **overrides: ``model``, ``seed``, ``max_steps``, ``output_dir``, ``recipe`` and any dotted
            config key, e.g. ``**{"rl.group_size": 4, "data.train_size": 500}``.
    """
    from mmpost.config import load_run_config
    from mmpost.engine import train as run

    if resume:
        return run(load_run_config(resume), resume=resume)
    named = {k: overrides.pop(k) for k in ("model", "seed", "max_steps", "output_dir", "recipe") if k in overrides}
    cfg = build_config(task, rewards=rewards, weights=weights, overrides=overrides, **named)
    return run(cfg)
