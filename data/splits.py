"""Train / held-out seed ranges shared by the seeded generators: the two never overlap."""

from __future__ import annotations

HELDOUT_SEED_OFFSET = 10_000_000


def split_seeds(split: str, size: int) -> range:
    """Seeds of a split: train from 0, held-out from ``HELDOUT_SEED_OFFSET`` (disjoint)."""
    if split == "train":
        if size > HELDOUT_SEED_OFFSET:
            raise ValueError(f"train size {size} would overlap the held-out seeds")
        return range(size)
    if split == "heldout":
        return range(HELDOUT_SEED_OFFSET, HELDOUT_SEED_OFFSET + size)
    raise ValueError(f"unknown split {split!r}; expected 'train' or 'heldout'")


def split_user_rows(rows: list, split: str) -> list:
    """A user's file split in file order: the last 10% (at least one row) is held out."""
    cut = max(1, len(rows) // 10)
    return rows[:-cut] if split == "train" else rows[-cut:]
