"""Train / held-out / out-of-distribution seed ranges shared by the seeded generators: none overlap."""

from __future__ import annotations

import logging
from typing import Callable

log = logging.getLogger(__name__)

VALIDATION_SEED_OFFSET = 5_000_000  # unseen rows of the training distribution, for choosing settings
HELDOUT_SEED_OFFSET = 10_000_000
OOD_SEED_OFFSET = 20_000_000  # a task's out-of-distribution rows (its ``ood`` member says what they are)


def split_seeds(split: str, size: int) -> range:
    """Seeds of a split: train from 0, validation from ``VALIDATION_SEED_OFFSET``, held-out from
    ``HELDOUT_SEED_OFFSET``, ood from ``OOD_SEED_OFFSET``."""
    if split == "train":
        if size > VALIDATION_SEED_OFFSET:
            raise ValueError(f"train size {size} would overlap the validation seeds")
        return range(size)
    if split == "validation":
        return range(VALIDATION_SEED_OFFSET, VALIDATION_SEED_OFFSET + size)
    if split == "heldout":
        return range(HELDOUT_SEED_OFFSET, HELDOUT_SEED_OFFSET + size)
    if split == "ood":
        return range(OOD_SEED_OFFSET, OOD_SEED_OFFSET + size)
    raise ValueError(f"unknown split {split!r}; expected 'train', 'validation', 'heldout' or 'ood'")


def generating(seeds, what: str):
    """``seeds`` with a progress bar (and ETA) while rows are generated; silent for a few rows."""
    from tqdm.auto import tqdm

    return tqdm(seeds, desc=f"generating {what}", unit="row", leave=False, disable=len(seeds) < 100)


def split_user_rows(data, split: str, read: Callable[[str], list]) -> list:
    """A user's rows of ``split`` ("train" or "heldout"); ``data`` is the run's ``DataConfig`` and
    ``read(path)`` the task's reader. With ``data.eval_path`` the held-out rows are that file's (the first
    ``data.eval_size``); otherwise the last ``data.eval_size`` rows of ``data.path`` are held out, at most
    half of the file (a warning says so). Training takes the first ``data.train_size`` of the rest.
    A user's data has no validation or out-of-distribution split."""
    if split not in ("train", "heldout"):
        raise ValueError(f"a user's data file has no {split!r} split: only train and heldout (data.eval_path, "
                         "or the file's last data.eval_size rows)")
    if data.eval_path:
        return read(data.eval_path)[:data.eval_size] if split == "heldout" else read(data.path)[:data.train_size]
    rows = read(data.path)
    held = min(data.eval_size, max(1, len(rows) // 2))
    if split == "train" and len(rows) <= held:
        raise ValueError(f"{data.path}: {len(rows)} usable row(s) leave none to train on once {held} are held out; "
                         "give more rows, or a separate held-out file with data.eval_path")
    if held < data.eval_size and (data.path, split) not in _warned:
        _warned.add((data.path, split))
        log.warning("%s: %d rows; holding out the last %d (data.eval_size=%d is capped at half the file). Set "
                    "data.eval_size, or give a separate held-out file with data.eval_path", data.path, len(rows),
                    held, data.eval_size)
    return rows[-held:] if split == "heldout" else rows[:-held][:data.train_size]


_warned: set = set()
