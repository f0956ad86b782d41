"""Experiment trackers through accelerate: TensorBoard by default (local, ``RUN_DIR/tensorboard``),
Weights & Biases or Trackio when chosen and installed. ``metrics.jsonl`` is written regardless."""

from __future__ import annotations

import importlib.util
import json
import numbers
from pathlib import Path

MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}


def check_trackers(trackers: list[str]) -> None:
    """Fail before training when a chosen tracker is not installed, naming what to install."""
    for name in trackers:
        if importlib.util.find_spec(MODULES[name]) is None:
            extra = "" if name == "tensorboard" else f" (pip install 'mmpost[{name}]')"
            raise ImportError(f"tracker {name!r} is not installed{extra}; or choose others with --set trackers=...")


def accelerator_arguments(trackers: list[str], run_dir: Path) -> dict:
    """Keyword arguments for ``Accelerator`` that route ``accelerator.log`` to ``trackers``."""
    if not trackers:
        return {}
    from accelerate.utils import ProjectConfiguration

    return {"log_with": list(trackers),
            "project_config": ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "tensorboard"))}


def flat_config(config: dict, prefix: str = "") -> dict:
    """A nested config as flat scalar hyper-parameters (TensorBoard's hparams take no lists or dicts)."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_config(value, name + "."))
        elif isinstance(value, list) and value and all(isinstance(v, dict) and "name" in v for v in value):
            for item in value:  # stages, by name
                out.update(flat_config(item, f"{name}.{item['name']}."))
        elif isinstance(value, (bool, str, numbers.Number)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


def scalars(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, numbers.Number) and not isinstance(v, bool)}


class RunLog:
    """``metrics.jsonl``: one line per step, flushed, truncated back to the checkpoint on resume
    (written by the main process only; ``enabled=False`` elsewhere)."""

    def __init__(self, path: Path, keep_until: tuple[int, int], enabled: bool = True):
        self.path, self.file = path, None
        if not enabled:
            return
        if path.exists():
            kept = []
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:  # a line cut short by a crash
                    continue
                if (record["stage_index"], record["step"]) <= keep_until:
                    kept.append(line)
            path.write_text("".join(line + "\n" for line in kept))
        self.file = path.open("a")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def log(self, record: dict) -> None:
        if self.file is None:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
