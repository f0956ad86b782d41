"""Name -> object registries for the CLI and the Python API, with lazy entries and loud lookups.

Built-in entries are import strings (``"mmpost.tasks.chart2code:Chart2Code"``) so that heavy
dependencies load only when an entry is used. A failed lookup names the closest entries.
This module imports nothing else of the project.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
from pathlib import Path
from typing import Any, Callable


def closest(name: str, choices) -> str:
    """``" Did you mean 'x'?"`` for the closest choice, or ``""``."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" Did you mean {match[0]!r}?" if match else ""


def check_choice(key: str, value, valid) -> None:
    """Raise ``ValueError`` naming ``key``, the choices and the closest one when ``value`` is not in ``valid``."""
    if value not in valid:
        raise ValueError(f"{key} must be one of {', '.join(valid)}, got {value!r}.{closest(str(value), valid)}")


class Registry:
    """A named collection of objects; entries are objects or lazy ``"module:attribute"`` strings."""

    def __init__(self, kind: str, builtins: dict[str, str] | None = None):
        self.kind = kind
        self._entries: dict[str, Any] = dict(builtins or {})

    def register(self, name: str, obj: Any = None):
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted."""
        if obj is None:
            return lambda o: self.register(name, o)
        self._entries[name] = obj
        return obj

    def get(self, name: str) -> Any:
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} {name!r}.{closest(name, self._entries)} "
                           f"Available: {', '.join(sorted(self._entries))}")
        entry = self._entries[name]
        if isinstance(entry, str):
            module, _, attribute = entry.partition(":")
            entry = getattr(importlib.import_module(module), attribute)
            self._entries[name] = entry
        return entry

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries


TASKS = Registry("task", {"chart2code": "mmpost.tasks.chart2code:Chart2Code", "reach": "mmpost.tasks.reach:Reach",
                           "multiview3d": "mmpost.tasks.multiview3d:Multiview3D",
                           "arithmetic": "mmpost.tasks.arithmetic:Arithmetic",
                           "grounding": "mmpost.tasks.grounding:Grounding",
                           "audio_qa": "mmpost.tasks.audio_qa:AudioQA",
                           "video_qa": "mmpost.tasks.video_qa:VideoQA",
                           "maniskill": "mmpost.tasks.maniskill:ManiSkill"})
REWARDS = Registry("reward", {
    "chart_render": "mmpost.rewards.chart_render:chart_render",
    "length": "mmpost.rewards.text:length",
    "code_block": "mmpost.rewards.text:code_block",
    "answer_match": "mmpost.rewards.answer:answer_match",
    "answer_partial": "mmpost.rewards.answer:answer_partial",
    "answer_given": "mmpost.rewards.answer:answer_given",
    "cosine_length": "mmpost.rewards.efficiency:cosine_length",
    "kimi_length": "mmpost.rewards.efficiency:kimi_length",
    "success": "mmpost.rewards.env:success",
    "env_return": "mmpost.rewards.env:env_return",
    "mrc": "mmpost.rewards.mrc:mrc",
    "mrc_nerfstudio": "mmpost.rewards.mrc_nerfstudio:mrc_nerfstudio",
    "object_match": "mmpost.rewards.object_match:object_match",
    "grounding_iou": "mmpost.rewards.grounding:grounding_iou",
    "grounding_hit": "mmpost.rewards.grounding:grounding_hit",
    "format": "mmpost.rewards.text:think_format",
    "answer_format": "mmpost.rewards.text:answer_format",
    "choice_accuracy": "mmpost.rewards.choice:choice_accuracy",
    "video_semantic": "mmpost.rewards.video_semantic:video_semantic",
})
ENVS = Registry("env", {
    "reach": "mmpost.envs.reach:ReachVecEnv",
    "maniskill": "mmpost.envs.maniskill:ManiSkillChunkEnv",
    "libero": "mmpost.envs.libero:LiberoChunkEnv",
})


def reward(name: str) -> Callable:
    """Decorator registering a reward function under ``name``.

    A reward has TRL's signature: ``fn(prompts, completions, **dataset_columns) -> list[float |
    None]`` with one value per completion; ``None`` means "not applicable" and is excluded from
    means (it is not zero).
    """
    return REWARDS.register(name)


def load_reward_file(spec: str) -> str:
    """Load ``path/to/file.py:function`` from outside the package, register it, return its name.

    The function is registered under its own name unless the file already registered it with
    ``@mmpost.reward``.
    """
    path, _, attribute = spec.rpartition(":")
    if not path or not attribute:
        raise ValueError(f"--reward expects FILE.py:FUNCTION, got {spec!r}")
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"reward file not found: {file}")
    module_spec = importlib.util.spec_from_file_location(f"mmpost_user_reward_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, attribute):
        raise AttributeError(f"{file} has no function {attribute!r}")
    function = getattr(module, attribute)
    if not any(REWARDS._entries.get(n) is function for n in REWARDS.names()):
        REWARDS.register(attribute, function)
        return attribute
    return next(n for n in REWARDS.names() if REWARDS._entries.get(n) is function)
