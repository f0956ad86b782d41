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


def sasr_sft_probability(grad_norm: float, reference_norm: float) -> float:
    """SASR's chance of an SFT step rather than a GRPO step: ``min(1, ||g_SFT|| / ||g_ref||)``, the
    demonstrations' gradient norm now over its value when the hybrid phase began. As RL moves the
    policy away from the demonstrations' distribution their gradient grows and SFT returns; once
    they are fitted, GRPO takes over. SASR (arXiv 2505.13026) states the rule as driven by the
    SFT gradient norm and the divergence from the warm-up distribution; its exact function and
    constants could not be read here, so this ratio form is ours (README, "Methods")."""
    if not math.isfinite(grad_norm):
        return 0.0
    if reference_norm <= 0:
        return 1.0
    return min(1.0, grad_norm / reference_norm)
