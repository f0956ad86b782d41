"""Train / held-out / out-of-distribution seed ranges shared by the seeded generators: none overlap."""

from __future__ import annotations

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


def split_user_rows(rows: list, split: str) -> list:
    """A user's file split in file order: the last 10% (at least one row) is held out; it has no
    validation or out-of-distribution split."""
    if split not in ("train", "heldout"):
        raise ValueError(f"a user's data file has no {split!r} split: only train and heldout (its last 10%)")
    cut = max(1, len(rows) // 10)
    return rows[:-cut] if split == "train" else rows[-cut:]
