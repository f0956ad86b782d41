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

from pathlib import Path

from mmpost.registry import REWARDS, TASKS, reward

__version__ = "0.1.0"
__all__ = ["train", "reward", "REWARDS", "TASKS", "build_config"]


def build_config(task: str = "", *, model: str = "", recipe: str | None = None,
                 rewards: list | None = None, weights: list[float] | None = None,
                 seed: int | None = None, max_steps: int | None = None, output_dir: str | None = None,
                 overrides: dict | None = None, config: str | None = None, more_rewards: list | None = None):
    """The resolved :class:`~mmpost.config.TrainConfig` for a task plus the given changes.

    ``task`` defaults to chart2code, or to ``config``'s: a full config file (``mmpost config TASK``'s
    output, or a run's ``config.yaml``) to start from instead of the task's defaults; its
    ``output_dir`` is kept only when that directory holds no run yet. ``recipe`` is one of the task's
    own recipes, a method of the library (``mmpost list recipes``: ``dpo``, ``chord``, ``reft``, ...;
    see :mod:`mmpost.recipes`) or a YAML file of stages. ``rewards`` holds registered names,
    ``FILE.py:FUNCTION`` specs or plain functions (TRL's style); ``more_rewards`` are added to whichever
    rewards result (the task's defaults when ``rewards`` is not given): the CLI's ``--reward``.
    Unknown names, keys and values fail here, before any model or data is loaded.
    """
    from mmpost.config import apply_overrides, stages_from_yaml
    from mmpost.model_path import resolve_model
    from mmpost.recipes import RECIPES, apply_recipe
    from mmpost.registry import closest, load_reward_files
    from mmpost.types import task_member

    if config:  # a full config file: its task unless another is named
        from mmpost.config_file import load_config_file

        cfg = load_config_file(config)
        if task and task != cfg.task:
            raise ValueError(f"--task {task} but {config} is a config for task {cfg.task!r}: leave --task out")
        task_cls = TASKS.get(cfg.task)
        task = cfg.task
        if cfg.output_dir and (Path(cfg.output_dir) / "config.yaml").exists():
            cfg.output_dir = ""  # a run's own config.yaml: reproduce it in a new run directory
    else:
        task = task or "chart2code"
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
    if more_rewards:
        rewards = [*(rewards if rewards is not None else cfg.rewards or task_cls.rewards), *more_rewards]
    if rewards is not None:
        rewards, files = reward_names(rewards)
        rewards = list(dict.fromkeys(rewards))  # a reward named twice counts once
        cfg.reward_files = [*cfg.reward_files, *(f for f in files if f not in cfg.reward_files)]
    for key, value in {"model": model or None, "seed": seed, "max_steps": max_steps, "output_dir": output_dir,
                       "rewards": rewards, "reward_weights": weights}.items():
        if value is not None:
            setattr(cfg, key, value)
    apply_overrides(cfg, overrides or {})
    cfg.model = resolve_model(cfg.model, task_member(task_cls, "builtin_models"))
    cfg.__post_init__()
    load_reward_files(cfg.reward_files)
    from mmpost.policy import check_capabilities, policy_class

    check_capabilities(cfg, policy_class(task_member(task_cls, "policy_kind")))  # before any model is built
    for name in cfg.rewards:
        REWARDS.get(name)  # unknown reward names fail before any work starts
    if any(s.rows.answer_only for s in cfg.stages) and not task_member(task_cls, "answer_only"):
        raise ValueError(f"rows.answer_only: task {task!r} has no reasoning-free form of its demonstrations "
                         "(arithmetic and video_qa have)")
    return cfg


def reward_names(rewards: list) -> tuple[list[str], list[str]]:
    """Registered names for ``rewards`` (names, ``FILE.py:FUNCTION`` specs, or plain functions, which get
    registered under their ``__name__``), and the ``FILE.py:FUNCTION`` records of those that live in files."""
    from mmpost.registry import load_reward_file, register_reward_function, reward_file_spec

    if callable(rewards) or isinstance(rewards, str):
        rewards = [rewards]
    names, files = [], []
    for entry in rewards:
        if isinstance(entry, str) and ".py:" in entry:  # FILE.py:FUNCTION
            files.append(reward_file_spec(entry))
            names.append(load_reward_file(entry))
        elif isinstance(entry, str):
            names.append(entry)
        elif callable(entry):
            name, spec = register_reward_function(entry)
            names.append(name)
            files += [spec] if spec else []
        else:
            raise TypeError(f"rewards: expected reward names or functions, got {entry!r}")
    return names, files


def train(task: str = "", rewards: list | None = None, weights: list[float] | None = None,
          resume: str | None = None, **overrides) -> dict:
    """Train ``task`` and return its before/after held-out metrics.

    Args:
        task: a registered task name (``mmpost list``); default chart2code, or ``config``'s task.
        rewards: reward names (registered with :func:`reward` or built in) or plain functions with
            TRL's signature ``fn(prompts, completions, **columns) -> list[float]``; default: the task's.
        weights: one weight per reward (default 1.0 each).
        resume: a run directory to continue from its last checkpoint (a run whose reward functions
            were defined in the calling script needs them passed again as ``rewards``).
        **overrides: ``model``, ``seed``, ``max_steps``, ``output_dir``, ``recipe``, ``config`` (a config
            file to start from, see :func:`build_config`) and any dotted
            config key, e.g. ``**{"rl.sampling.group_size": 4, "data.train_size": 500}``.
    """
    from mmpost.config import load_run_config
    from mmpost.engine import train as run

    if resume:
        if rewards is not None:
            reward_names(rewards)  # registers the functions a script defined
        return run(load_run_config(resume), resume=resume)
    named = {k: overrides.pop(k) for k in ("model", "seed", "max_steps", "output_dir", "recipe", "config")
             if k in overrides}
    cfg = build_config(task, rewards=rewards, weights=weights, overrides=overrides, **named)
    return run(cfg)
