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


class RewardNotRegistered(LookupError):
    """A run's reward that no file or registration provides in this process (e.g. resuming a run whose
    reward function was defined by the script that started it)."""


_LOADED_FILES: dict[str, str] = {}  # "ABS_FILE.py:FUNCTION" -> the name it is registered under


def reward_file_spec(spec: str) -> str:
    """``FILE.py:FUNCTION`` with the file made absolute (what a run's config records), checked."""
    path, _, attribute = spec.rpartition(":")
    if not path or not attribute or not path.endswith(".py"):
        raise ValueError(f"--reward expects FILE.py:FUNCTION, got {spec!r}")
    return f"{Path(path).expanduser().resolve()}:{attribute}"


def load_reward_file(spec: str) -> str:
    """Load ``path/to/file.py:function`` from outside the package, register it, return its name.

    The function is registered under its own name unless the file already registered it with
    ``@mmpost.reward``. Loading the same spec again returns the same name without running the file again.
    """
    spec = reward_file_spec(spec)
    if spec in _LOADED_FILES:
        return _LOADED_FILES[spec]
    path, _, attribute = spec.rpartition(":")
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"reward file not found: {file}")
    module_spec = importlib.util.spec_from_file_location(f"mmpost_user_reward_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not callable(getattr(module, attribute, None)):
        functions = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise AttributeError(f"{file} has no function {attribute!r}.{closest(attribute, functions)} "
                             f"Functions there: {', '.join(functions) or 'none'}")
    _LOADED_FILES[spec] = register_reward_function(getattr(module, attribute))[0]
    return _LOADED_FILES[spec]


def load_reward_files(specs: list[str]) -> list[str]:
    """Load a run's recorded user reward files (``TrainConfig.reward_files``) again: a resumed run or a
    re-run ``config.yaml`` needs the same functions. A moved file fails naming what to pass instead."""
    names = []
    for spec in specs:
        try:
            names.append(load_reward_file(spec))
        except FileNotFoundError as error:
            function = spec.rpartition(":")[2]
            raise FileNotFoundError(f"{error}: this run's reward {function!r} comes from it. Put the file back, "
                                    f"or pass --reward NEW_FILE.py:{function} (with --resume too)") from None
    return names


def replace_reward_files(recorded: list[str], given: list[str]) -> list[str]:
    """``recorded`` specs with those of the same function name replaced by the ``given`` ones (resuming a
    run whose reward file moved: ``--resume RUN --reward NEW_PLACE.py:FUNCTION``)."""
    given = [reward_file_spec(spec) for spec in given]
    functions = {spec.rpartition(":")[2] for spec in given}
    return [spec for spec in recorded if spec.rpartition(":")[2] not in functions] + given


def register_reward_function(function: Callable) -> tuple[str, str | None]:
    """Register a plain reward function (TRL's style: ``rewards=[fn]``) under its ``__name__``, or find the
    name it already has. Returns ``(name, spec)``: ``spec`` is ``FILE.py:NAME`` when the function is a
    top-level function of a file, so that a resumed run can load it again, else ``None``."""
    for name in REWARDS.names():
        if REWARDS._entries.get(name) is function:
            return name, _remember(_source_spec(function), name)
    name = getattr(function, "__name__", "")
    if not name.isidentifier():
        raise ValueError(f"a reward function needs a name: {function!r} has none (a lambda?). Define it with "
                         "`def`, or register it with @mmpost.reward('name') and pass the name")
    if name in REWARDS and REWARDS._entries[name] is not function:
        raise ValueError(f"reward name {name!r} is taken by another function; register yours under another "
                         f"name with @mmpost.reward('my_{name}') and pass that name")
    REWARDS.register(name, function)
    return name, _remember(_source_spec(function), name)


def _remember(spec: str | None, name: str) -> str | None:
    if spec:  # the file is loaded already: loading the spec again must find this function, not run the file
        _LOADED_FILES.setdefault(spec, name)
    return spec


def _source_spec(function: Callable) -> str | None:
    import inspect
    import sys

    module = sys.modules.get(getattr(function, "__module__", ""), None)
    try:
        file = inspect.getsourcefile(function)
    except TypeError:
        return None
    # a script's own functions (__main__) are not recorded: loading the script again would run it
    if (not file or module is None or getattr(module, function.__name__, None) is not function
            or module.__name__ == "__main__" or module.__name__.startswith("mmpost.")):
        return None
    return f"{Path(file).resolve()}:{function.__name__}"
