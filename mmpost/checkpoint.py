"""Atomic checkpoints: everything needed to continue a run exactly.

A checkpoint is a directory ``checkpoints/sSS-NNNNNN`` (stage index, steps done in that stage)
holding one ``state.pt``: model and optimizer state, scheduler, RNG states and position. It is
written under a temporary name and renamed into place only when complete, so a crash mid-write
never leaves a checkpoint that could be loaded.
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import shutil
from pathlib import Path

import numpy as np
import torch

from mmpost import faults

_NAME = re.compile(r"^s(\d{2})-(\d{6})$")


def write_atomic(path: Path, write) -> None:
    """``write(temporary_path)``, then rename it over ``path``: all or nothing. Each writer gets its own
    temporary name (same suffix), so processes filling a shared cache at once never trip over each other:
    the last rename wins, with the same content."""
    path = Path(path)
    tmp = path.with_name(f".{os.getpid()}-{secrets.token_hex(4)}.{path.name}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, data) -> None:
    """``path`` holds ``data`` as JSON, all or nothing (:func:`write_atomic`)."""
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1)))


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointError(OSError):
    """A checkpoint could not be written (disk full, file size limit, I/O error); the previous
    checkpoint is intact."""


class InsufficientSpaceError(OSError):
    """The output directory's disk cannot hold the run's checkpoints."""


def check_free_space(run_dir: Path, model: torch.nn.Module, keep: int) -> int:
    """Fail before training when ``run_dir``'s disk cannot hold ``keep + 1`` checkpoints of ``model``
    (weights + AdamW's two moments each, the extra one being written before the oldest is pruned)
    plus the final model. Returns the estimate in bytes."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    moments = sum(2 * p.numel() * 4 for p in model.parameters() if p.requires_grad)
    needed = (keep + 1) * (weights + moments) + weights
    free = shutil.disk_usage(run_dir).free
    if free < needed:
        raise InsufficientSpaceError(
            f"{run_dir} has {free / 2**20:.0f} MiB free; this run's checkpoints need about {needed / 2**20:.0f} MiB "
            f"({keep} kept + 1 being written, plus the final model): free space, choose another --output-dir "
            f"or lower keep_checkpoints")
    return needed


class _Writer:
    """A file wrapper that remembers the OSError behind a failed write (torch.save's own message for
    it is an opaque "unexpected pos")."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = self.error or error
            raise

    def flush(self) -> None:
        self.file.flush()


def save_checkpoint(run_dir: Path, stage_index: int, step: int, payload: dict, keep: int = 2,
                    shards=None) -> Path:
    """Write ``payload`` (plus RNG states) atomically as checkpoint (stage_index, step); prune old ones.
    ``shards``: a sharded run's ``shards(folder)``, which every process calls to write its shards
    (:func:`mmpost.sharding.save_shards`); every process then calls this, the main one writes the rest.

    Raises :class:`CheckpointError` when the write fails (the partial files are removed; earlier
    checkpoints stay loadable)."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"s{stage_index:02d}-{step:06d}"
    if shards is not None:
        return _save_sharded(run_dir, final, payload, keep, shards)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    _write(run_dir, tmp, final, payload)
    _publish(run_dir, tmp, final, keep)
    return final


def _save_sharded(run_dir: Path, final: Path, payload: dict, keep: int, shards) -> Path:
    """:func:`save_checkpoint` of a sharded run: all processes write their shards into the temporary
    folder, then the main process adds ``state.pt`` and renames it into place."""
    import torch.distributed as dist

    from mmpost.distributed import world

    main = world()[0] == 0
    tmp = final.with_name(f".tmp-{final.name}-sharded")
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    shards(tmp / "shards")
    dist.barrier()
    if main:
        _write(run_dir, tmp, final, payload)
        _publish(run_dir, tmp, final, keep)
    dist.barrier()  # nobody trains on while the checkpoint is still a temporary folder
    return final


def _write(run_dir: Path, tmp: Path, final: Path, payload: dict) -> None:
    """``tmp/state.pt`` with ``payload``, the RNG states and the position, flushed to disk."""
    stage_index, step = (int(n) for n in _NAME.match(final.name).groups())
    writer = None
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        with open(tmp / "state.pt", "wb") as f:
            writer = _Writer(f)
            torch.save({**payload, "rng": rng_state(), "stage_index": stage_index, "step": step}, writer)
            f.flush()
            faults.reached("checkpoint_write")
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as error:  # torch.save reports a failed write as RuntimeError
        error = (writer and writer.error) or error  # the OS's reason (disk full, file too large), not torch's
        shutil.rmtree(tmp, ignore_errors=True)
        previous = list_checkpoints(run_dir)
        raise CheckpointError(
            f"could not write checkpoint {final} ({error}); "
            + (f"the last complete checkpoint, {previous[-1].name}, is intact: free space and continue with "
               f"`mmpost train --resume {run_dir}`" if previous else "no earlier checkpoint exists")) from error


def _publish(run_dir: Path, tmp: Path, final: Path, keep: int) -> None:
    """Rename the complete ``tmp`` into place and prune all but the newest ``keep`` checkpoints."""
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary, half-written ones are ignored)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.match(p.name) and (p / "state.pt").is_file()]
    return sorted(found, key=lambda p: p.name)


def load_checkpoint(path: Path) -> dict:
    """The checkpoint in ``path``; its ``"directory"`` is ``path`` (a sharded run's shards are there)."""
    return {**torch.load(Path(path) / "state.pt", map_location="cpu", weights_only=False), "directory": Path(path)}
