"""Configs as files: ``mmpost config TASK`` writes the full resolved config with a comment on every
field, and ``mmpost train --config FILE`` (or a run's own ``config.yaml``) runs one.

The comments are the ones written beside each field in the config classes' source, so the file and
the code cannot disagree.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from functools import lru_cache
from pathlib import Path

import yaml

from mmpost.config import TrainConfig, from_dict
from mmpost.registry import closest

_FIELD_LINE = re.compile(r"^\s+(\w+)\s*:[^#]*?(?:#\s*(.*))?$")


@lru_cache(maxsize=None)
def _class_comments(cls: type) -> dict[str, str]:
    """``{field: comment}`` from the class source: the comment on the field's line, else the comment
    lines right above it."""
    comments, above = {}, []
    for line in inspect.getsource(cls).splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# "))
            continue
        match = _FIELD_LINE.match(line)
        if match and match.group(1) in {f.name for f in dataclasses.fields(cls)}:
            comment = match.group(2) or " ".join(above)
            if comment:
                comments[match.group(1)] = comment
        above = []
    return comments


def field_comments(cls: type = TrainConfig, prefix: str = "") -> dict[str, str]:
    """``{"data.train_size": comment, "stages.optim.lr": comment, ...}`` for every documented field."""
    comments = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = prefix + f.name
        if f.name in _class_comments(cls):
            comments[path] = _class_comments(cls)[f.name]
        inner = hints[f.name]
        if typing.get_origin(inner) is list and typing.get_args(inner) and dataclasses.is_dataclass(typing.get_args(inner)[0]):
            inner = typing.get_args(inner)[0]  # stages: list[Stage]
        if dataclasses.is_dataclass(inner):
            comments.update(field_comments(inner, path + "."))
    return comments


def annotated_yaml(cfg: TrainConfig) -> str:
    """``cfg`` as YAML, each field followed by its comment (a file ``mmpost train --config`` reads back)."""
    comments, out, path = field_comments(), [], []  # path: (indent, key) of the enclosing keys
    for line in yaml.safe_dump(cfg.to_dict(), sort_keys=False, width=1000).splitlines():
        text = line.lstrip()
        indent = len(line) - len(text)
        if text.startswith("- "):  # a list item: its first key is one level in
            indent, text = indent + 2, text[2:]
        key = re.match(r"([A-Za-z_]\w*):", text)
        if key:
            while path and path[-1][0] >= indent:
                path.pop()
            path.append((indent, key.group(1)))
            comment = comments.get(".".join(k for _, k in path))
            line += f"  # {comment}" if comment else ""
        out.append(line)
    header = (f"# mmpost config for task {cfg.task!r}: run it with `mmpost train --config THIS_FILE [--set KEY=VALUE]`\n"
              "# (output_dir '' = a new runs/<task>-<time> directory)\n")
    return header + "\n".join(out) + "\n"


def load_config_file(path: str | Path) -> TrainConfig:
    """A full config: ``mmpost config``'s output or a run's ``config.yaml`` (a recipe file, with only
    ``stages:``, goes to ``--recipe``). Unknown keys fail naming the closest one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(data, dict) or "task" not in data:
        raise ValueError(f"{path}: not a config (it has no 'task'); a file of `stages:` only is a recipe: "
                         "pass it with --recipe")
    _check_keys(data, TrainConfig, str(path))
    return from_dict(data)


def _check_keys(data: dict, cls: type, where: str, prefix: str = "") -> None:
    valid = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key not in valid:
            raise KeyError(f"{where}: unknown config key {prefix + key!r}.{closest(key, valid)}")
        inner = typing.get_type_hints(cls)[key]
        if dataclasses.is_dataclass(inner) and isinstance(value, dict):
            _check_keys(value, inner, where, f"{prefix}{key}.")
