"""Data mixtures: a stage trains on its own split plus a share of other splits (DMT).

DMT (Dual-stage Mixed Fine-tuning, "How Abilities in LLMs are Affected by SFT Data Composition")
learns the specialist abilities first, then the general one with a fraction ``k`` of the specialist
data mixed back in, so the first abilities are not forgotten. ``Stage.rows.mix = {split: k}`` adds
``round(k * len(split))`` rows of each named split (at least one when ``k`` > 0), drawn without
replacement with the run's seed, to the stage's rows; batches then draw from the union. ``k`` = 1
is plain multi-task training on both.
"""

from __future__ import annotations

import random


def mixed_rows(rows: list[dict], others: dict[str, list[dict]], mix: dict[str, float], seed: int) -> list[dict]:
    """``rows`` followed by each split's share of ``others`` (a seeded sample without replacement)."""
    out = list(rows)
    for split, share in mix.items():
        pool = others[split]
        count = min(len(pool), max(1, round(share * len(pool)))) if share > 0 else 0
        out += random.Random(f"{seed}:{split}").sample(pool, count)
    return out
