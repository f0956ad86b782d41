"""Coefficient schedules and controllers that change during a stage."""

from __future__ import annotations

import math


def chord_mu(step: int, peak: float, valley: float, warmup: int, decay: int) -> float:
    """CHORD's weight of the SFT term: linear warm-up 0 -> ``peak`` over ``warmup`` steps, cosine
    decay to ``valley`` over ``decay`` steps, then constant (Trinity-RFT ``mu_schedule_function``)."""
    if step < warmup:
        return step / warmup * peak
    if step < warmup + decay:
        return valley + (peak - valley) * 0.5 * (1 + math.cos(math.pi * (step - warmup) / decay))
    return valley


def cosine(step: int, steps: int, start: float, end: float) -> float:
    """``start`` at step 0 to ``end`` at the last step along a half cosine (Prefix-RFT's prefix ratio)."""
    progress = min(1.0, step / max(1, steps - 1))
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))


def entropy_temperature(temperature: float, entropy: float, target: float, rate: float,
                        bounds: tuple[float, float] = (0.1, 3.0)) -> float:
    """Next sampling temperature that moves the rollouts' token entropy toward ``target``:
    ``T * exp(rate * (target - H))``, clamped to ``bounds``. AceReason-Nemotron 1.1 picks T so that
    the temperature-adjusted entropy stays near 0.3; this applies that rule as a controller."""
    low, high = bounds
    return min(high, max(low, temperature * math.exp(rate * (target - entropy))))
