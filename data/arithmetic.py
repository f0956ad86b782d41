"""Seeded multi-step arithmetic word problems with worked solutions (a GSM8K-shaped text task).

A problem chains two or three operations on small numbers; its solution writes one line per
operation and ends with ``#### ANSWER`` as GSM8K does, so answer extraction is a rule. Held-out
problems use seeds the training split never draws.
"""

from __future__ import annotations

import random

HELDOUT_OFFSET = 10_000_000
NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fay", "Gus", "Hana"]
THINGS = ["apples", "books", "coins", "stamps", "shells", "cards"]


def problem(seed: int) -> dict:
    """``{"question", "solution", "answer"}`` for ``seed``; every intermediate value stays in 0..199."""
    rng = random.Random(seed)
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    value = rng.randint(5, 60)
    sentences = [f"{name} has {value} {thing}."]
    lines = []
    for _ in range(rng.choice([2, 3])):
        if rng.random() < 0.5 or value < 6:
            amount = rng.randint(2, 40)
            sentences.append(f"{name} gets {amount} more.")
            lines.append(f"{value}+{amount}={value + amount}")
            value += amount
        else:
            amount = rng.randint(1, value - 1)
            sentences.append(f"{name} gives away {amount}.")
            lines.append(f"{value}-{amount}={value - amount}")
            value -= amount
    sentences.append(f"How many {thing} does {name} have now?")
    return {"question": " ".join(sentences), "solution": "\n".join(lines) + f"\n#### {value}",
            "answer": str(value), "seed": seed}


def split_seeds(split: str, size: int) -> list[int]:
    """Seeds of a split: ``train`` 0.., ``heldout`` from 10M (disjoint by construction)."""
    if split not in ("train", "heldout"):
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'heldout'")
    start = 0 if split == "train" else HELDOUT_OFFSET
    return list(range(start, start + size))
