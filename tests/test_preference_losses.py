"""Preference losses against their formulas on hand-computed inputs."""

import math

import pytest
import torch

from mmpost.algos.preference import dpo, dpo_length_normalized, ipo, orpo_odds_ratio, rdpo, simpo

W, L, RW, RL = torch.tensor([-4.0]), torch.tensor([-6.0]), torch.tensor([-5.0]), torch.tensor([-5.5])
LEN_W, LEN_L = torch.tensor([4.0]), torch.tensor([2.0])


def neg_logsigmoid(x: float) -> float:
    return math.log1p(math.exp(-x))


def test_dpo_and_cdpo_by_hand():
    # D_w = 1, D_l = -0.5: margin 0.1 * 1.5 = 0.15
    assert dpo(W, L, RW, RL, beta=0.1).item() == pytest.approx(neg_logsigmoid(0.15))
    expected = 0.9 * neg_logsigmoid(0.15) + 0.1 * neg_logsigmoid(-0.15)
    assert dpo(W, L, RW, RL, beta=0.1, label_smoothing=0.1).item() == pytest.approx(expected)


def test_ipo_by_hand():
    # D_w / 4 - D_l / 2 = 0.25 + 0.25 = 0.5; target 1 / (2 * 0.5) = 1
    assert ipo(W, L, RW, RL, LEN_W, LEN_L, beta=0.5).item() == pytest.approx((0.5 - 1.0) ** 2)


def test_rdpo_adds_the_length_term():
    # 0.1 * 1.5 + 0.05 * (4 - 2) = 0.25
    assert rdpo(W, L, RW, RL, LEN_W, LEN_L, beta=0.1, alpha=0.05).item() == pytest.approx(neg_logsigmoid(0.25))
    assert rdpo(W, L, RW, RL, LEN_W, LEN_L, beta=0.1, alpha=0.0).item() == pytest.approx(dpo(W, L, RW, RL).item())


def test_length_normalized_dpo_by_hand():
    assert dpo_length_normalized(W, L, RW, RL, LEN_W, LEN_L, beta=2.0).item() == pytest.approx(neg_logsigmoid(1.0))


def test_simpo_by_hand():
    # 2.5 * (-4 / 4) - 2.5 * (-6 / 2) - 1.375 = -2.5 + 7.5 - 1.375 = 3.625
    assert simpo(W, L, LEN_W, LEN_L, beta=2.5, gamma=1.375).item() == pytest.approx(neg_logsigmoid(3.625))


def test_orpo_odds_ratio_by_hand():
    mw, ml = -0.5, -1.5
    log_odds = lambda m: m - math.log(1 - math.exp(m))  # noqa: E731
    expected = neg_logsigmoid(log_odds(mw) - log_odds(ml))
    assert orpo_odds_ratio(torch.tensor([mw]), torch.tensor([ml])).item() == pytest.approx(expected)
    # stable where P is close to 1 (mean log-prob near 0)
    assert torch.isfinite(orpo_odds_ratio(torch.tensor([-1e-7]), torch.tensor([-3.0]))).all()


def test_kto_by_hand():
    from mmpost.algos.preference import kto

    logp, ref = torch.tensor([-2.0, -3.0]), torch.tensor([-2.5, -2.0])  # ratios +0.5 and -1.0
    desirable = torch.tensor([True, False])
    kl_logp, kl_ref = torch.tensor([-4.0, -5.0]), torch.tensor([-4.2, -5.0])  # z0 = max(0, 0.1) = 0.1
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = [1 - sig(0.1 * (0.5 - 0.1)), 2.0 * (1 - sig(0.1 * (0.1 + 1.0)))]
    out = kto(logp, ref, desirable, kl_logp, kl_ref, beta=0.1, weight_undesirable=2.0)
    assert torch.allclose(out, torch.tensor(expected))
    # a negative mean mismatched ratio is clamped to z0 = 0
    out = kto(logp, ref, desirable, kl_ref, kl_logp, beta=0.1, weight_undesirable=2.0)
    assert out[0].item() == pytest.approx(1 - sig(0.05))


def test_best_worst_pairs():
    from mmpost.algos.preference import best_worst_pairs

    rewards = torch.tensor([0.2, 0.9, 0.1, 0.5, 0.5, 0.3, 0.7, 0.7])
    group = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    assert best_worst_pairs(rewards, group) == [(1, 2), (6, 5)]  # group 1 has no spread: dropped
