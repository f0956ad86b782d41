"""Train / held-out / out-of-distribution seed ranges shared by the seeded generators: none overlap."""

from __future__ import annotations

HELDOUT_SEED_OFFSET = 10_000_000
OOD_SEED_OFFSET = 20_000_000  # a task's out-of-distribution rows (its ``ood`` member says what they are)


def split_seeds(split: str, size: int) -> range:
    """Seeds of a split: train from 0, held-out from ``HELDOUT_SEED_OFFSET``, ood from ``OOD_SEED_OFFSET``."""
    if split == "train":
        if size > HELDOUT_SEED_OFFSET:
            raise ValueError(f"train size {size} would overlap the held-out seeds")
        return range(size)
    if split == "heldout":
        return range(HELDOUT_SEED_OFFSET, HELDOUT_SEED_OFFSET + size)
    if split == "ood":
        return range(OOD_SEED_OFFSET, OOD_SEED_OFFSET + size)
    raise ValueError(f"unknown split {split!r}; expected 'train', 'heldout' or 'ood'")


def split_user_rows(rows: list, split: str) -> list:
    """A user's file split in file order: the last 10% (at least one row) is held out."""
    cut = max(1, len(rows) // 10)
    return rows[:-cut] if split == "train" else rows[-cut:]
