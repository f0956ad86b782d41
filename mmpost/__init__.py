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
    """The resolved :class:`~mmpost.config.TrainConfig` for a task plus the given changes.

    ``recipe`` is one of the task's own recipes, a method of the library (``mmpost list recipes``:
    ``dpo``, ``chord``, ``reft``, ...; see :mod:`mmpost.recipes`) or a YAML file of stages. Unknown
    names, keys and values fail here, before any model or data is loaded.
    """
    from mmpost.config import apply_overrides, stages_from_yaml
    from mmpost.recipes import RECIPES, apply_recipe
    from mmpost.registry import closest
    from mmpost.types import task_member

    task_cls = TASKS.get(task)
    cfg = task_cls.default_config()
    named = task_member(task_cls, "recipes")
    if recipe in named:  # a task's named recipe: overrides of its default config
        apply_overrides(cfg, dict(named[recipe]))
    elif recipe in RECIPES:  # a method from the library, on this task's default stages
        apply_recipe(cfg, RECIPES[recipe], task_cls)
    elif recipe:
        if not recipe.endswith((".yaml", ".yml")):
            choices = [*named, *RECIPES]
            raise ValueError(f"unknown recipe {recipe!r} for task {task!r}.{closest(recipe, choices)} Give a YAML "
                             f"file or one of: {', '.join(choices)} (`mmpost list recipes`)")
        cfg.stages = stages_from_yaml(recipe)
    for key, value in {"model": model or None, "seed": seed, "max_steps": max_steps, "output_dir": output_dir,
                       "rewards": rewards, "reward_weights": weights}.items():
        if value is not None:
            setattr(cfg, key, value)
    apply_overrides(cfg, overrides or {})
    cfg.__post_init__()
    from mmpost.policy import check_capabilities, policy_class

    check_capabilities(cfg, policy_class(task_member(task_cls, "policy_kind")))  # before any model is built
    for name in cfg.rewards:
        REWARDS.get(name)  # unknown reward names fail before any work starts
    if any(s.rows.answer_only for s in cfg.stages) and not task_member(task_cls, "answer_only"):
        raise ValueError(f"rows.answer_only: task {task!r} has no reasoning-free form of its demonstrations "
                         "(arithmetic and video_qa have)")
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
            config key, e.g. ``**{"rl.sampling.group_size": 4, "data.train_size": 500}``.
    """
    from mmpost.config import load_run_config
    from mmpost.engine import train as run

    if resume:
        return run(load_run_config(resume), resume=resume)
    named = {k: overrides.pop(k) for k in ("model", "seed", "max_steps", "output_dir", "recipe") if k in overrides}
    cfg = build_config(task, rewards=rewards, weights=weights, overrides=overrides, **named)
    return run(cfg)
