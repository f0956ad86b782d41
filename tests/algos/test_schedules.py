"""Schedules of the hybrid and adaptive methods (CHORD's mu, the entropy-steered temperature, the
Prefix-RFT share, SASR's switching probability), by hand."""

import math

import pytest


def test_chord_mu_schedule_by_hand():
    from mmpost.algos.schedules import chord_mu

    # warm-up 0 -> 0.9 over 10 steps, cosine 0.9 -> 0.1 over 20, then 0.1
    assert chord_mu(5, 0.9, 0.1, 10, 20) == pytest.approx(0.45)
    assert chord_mu(10, 0.9, 0.1, 10, 20) == pytest.approx(0.9)
    assert chord_mu(20, 0.9, 0.1, 10, 20) == pytest.approx(0.5)  # half-way: cos(pi/2) = 0
    assert chord_mu(40, 0.9, 0.1, 10, 20) == pytest.approx(0.1)
    assert chord_mu(3, 0.1, 0.1, 0, 0) == pytest.approx(0.1)  # CHORD-phi's constant mu


def test_entropy_temperature_controller_by_hand():
    from mmpost.algos.schedules import entropy_temperature

    assert entropy_temperature(1.0, 0.5, 0.3, 0.5) == pytest.approx(math.exp(-0.1))  # too random: cool down
    assert entropy_temperature(1.0, 0.1, 0.3, 0.5) == pytest.approx(math.exp(0.1))  # too sure: heat up
    assert entropy_temperature(1.0, 50.0, 0.3, 0.5) == pytest.approx(0.1)  # clamped


def test_prefix_ratio_cosine_by_hand():
    from mmpost.algos.schedules import cosine

    assert cosine(0, 11, 0.95, 0.05) == pytest.approx(0.95)
    assert cosine(5, 11, 0.95, 0.05) == pytest.approx(0.5)  # half-way
    assert cosine(10, 11, 0.95, 0.05) == pytest.approx(0.05)


def test_sasr_switching_probability_by_hand():
    from mmpost.algos.schedules import sasr_sft_probability

    assert sasr_sft_probability(0.5, 2.0) == 0.25  # demonstrations fitted better than at the start: mostly GRPO
    assert sasr_sft_probability(3.0, 2.0) == 1.0  # drifted away from them: SFT
    assert sasr_sft_probability(float("nan"), 2.0) == 0.0  # no finite SFT gradient: never an SFT step
    assert sasr_sft_probability(1.0, 0.0) == 1.0
