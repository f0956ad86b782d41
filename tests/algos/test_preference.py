"""Preference losses against their formulas on hand-computed inputs."""

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from mmpost.algos import preference
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


# ---------------------------------------------------------------- agreement with TRL's trainers


class _OneProcess:
    """accelerate on one process, for the metric bookkeeping inside TRL's loss functions."""

    num_processes = 1
    device = torch.device("cpu")

    def __getattr__(self, name):
        return lambda value, *args, **kwargs: value


def _token_logps(b: int, t: int, seed: int):
    """Random per-token log-probs [b, t] zero on padding, and the completion mask [b, t + 1] (position 0
    is the prompt), as TRL's fused LM head returns them."""
    gen = torch.Generator().manual_seed(seed)
    mask = (torch.rand(b, t, generator=gen) > 0.3).float()
    mask[:, 0] = 1
    logps = -torch.rand(b, t, generator=gen) * 2 * mask
    return logps, torch.cat([torch.zeros(b, 1), mask], dim=1).long()


def _outputs(logps):
    return SimpleNamespace(log_probs=logps, entropy=torch.zeros_like(logps), mean_logits=torch.zeros_like(logps),
                           is_top1=torch.zeros_like(logps, dtype=torch.bool))


def _trl_dpo(loss_type, logps, completion_mask, ref_w, ref_l, beta, label_smoothing):
    from trl import DPOTrainer

    fake = SimpleNamespace(model=SimpleNamespace(training=True), accelerator=_OneProcess(), aux_loss_enabled=False,
                           ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
                           loss_types=[loss_type], loss_weights=[1.0], beta=beta, label_smoothing=label_smoothing,
                           use_weighting=False, _metrics={"train": defaultdict(list)}, _total_train_tokens=0,
                           _tp_size=1)
    n = completion_mask.shape[0]
    inputs = {"input_ids": torch.zeros_like(completion_mask), "attention_mask": torch.ones_like(completion_mask),
              "completion_mask": completion_mask, "ref_chosen_logps": ref_w, "ref_rejected_logps": ref_l}
    assert n % 2 == 0
    return DPOTrainer._compute_loss(fake, lambda **kw: _outputs(logps), inputs, return_outputs=False)


@pytest.mark.parametrize("loss_type", ["sigmoid", "robust", "ipo", "sigmoid_norm"])
def test_dpo_family_agrees_with_trl(loss_type):
    pytest.importorskip("trl")
    b, beta, smoothing = 4, 0.3, 0.1 if loss_type == "robust" else 0.0
    logps, completion_mask = _token_logps(2 * b, 6, seed=3)
    ref = -torch.rand(2 * b) * 6
    try:
        expected = _trl_dpo(loss_type, logps, completion_mask, ref[:b], ref[b:], beta, smoothing)
    except (AttributeError, KeyError, TypeError) as error:  # TRL internals moved: report, don't hide
        pytest.fail(f"TRL's DPOTrainer._compute_loss changed its internals: {error!r}")
    sums, lengths = logps.sum(-1), completion_mask.sum(-1).float()
    w, lo, lw, ll = sums[:b], sums[b:], lengths[:b], lengths[b:]
    ours = {"sigmoid": lambda: preference.dpo(w, lo, ref[:b], ref[b:], beta),
            "robust": lambda: preference.robust_dpo(w, lo, ref[:b], ref[b:], beta, smoothing),
            "ipo": lambda: preference.ipo(w, lo, ref[:b], ref[b:], lw, ll, beta),
            "sigmoid_norm": lambda: preference.dpo_length_normalized(w, lo, ref[:b], ref[b:], lw, ll, beta)}
    assert ours[loss_type]().mean().item() == pytest.approx(expected.item(), abs=1e-6)


def trl_kto_loss(logps, completion_mask, label, ref, kl_logps, kl_ref, beta, desirable=1.0, undesirable=1.0):
    """TRL's ``KTOTrainer._compute_loss`` on given per-token log-probs (the model forward replaced)."""
    from trl import KTOTrainer

    fake = SimpleNamespace(model=SimpleNamespace(training=True), accelerator=_OneProcess(), aux_loss_enabled=False,
                           precompute_ref_logps=True, calculate_KL=True, loss_type="kto", beta=beta,
                           desirable_weight=desirable, undesirable_weight=undesirable,
                           _metrics={"train": defaultdict(list)}, _total_train_tokens=0, _tp_size=1,
                           _compute_kl_logps=lambda model, batch: kl_logps)
    inputs = {"input_ids": torch.zeros_like(completion_mask), "attention_mask": torch.ones_like(completion_mask),
              "completion_mask": completion_mask, "label": label, "ref_logps": ref, "ref_KL_logps": kl_ref}
    try:
        return KTOTrainer._compute_loss(fake, lambda **kw: _outputs(logps), inputs, return_outputs=False)
    except (AttributeError, KeyError, TypeError) as error:
        pytest.fail(f"TRL's KTOTrainer._compute_loss changed its internals: {error!r}")


def test_kto_agrees_with_trl():
    pytest.importorskip("trl")
    b, beta = 6, 0.2
    logps, completion_mask = _token_logps(b, 5, seed=4)
    label = torch.tensor([True, False, True, True, False, False])
    ref, kl_logps, kl_ref = -torch.rand(b) * 5, -torch.rand(b) * 5, -torch.rand(b) * 6
    expected = trl_kto_loss(logps, completion_mask, label, ref, kl_logps, kl_ref, beta, 1.3, 0.7)
    ours = preference.kto(logps.sum(-1), ref, label, kl_logps, kl_ref, beta, 1.3, 0.7)
    assert ours.mean().item() == pytest.approx(expected.item(), abs=1e-6)


def test_simpo_and_orpo_agree_with_trl():
    pytest.importorskip("trl")
    from trl.experimental.cpo import CPOTrainer
    from trl.experimental.orpo import ORPOTrainer

    mean_w, mean_l = -torch.rand(5) * 2, -torch.rand(5) * 2  # mean-token log-probs (average_log_prob=True)
    fake = SimpleNamespace(alpha=0.0, loss_type="simpo", simpo_gamma=1.375, beta=2.5, label_smoothing=0.0,
                           accelerator=_OneProcess())
    expected = CPOTrainer.cpo_loss(fake, mean_w, mean_l)[0]
    lengths = torch.full((5,), 3.0)  # SimPO takes sums and lengths: mean = sum / length
    assert torch.allclose(preference.simpo(mean_w * lengths, mean_l * lengths, lengths, lengths, 2.5, 1.375),
                          expected, atol=1e-6)
    fake = SimpleNamespace(beta=0.1, accelerator=_OneProcess())
    trl_term = ORPOTrainer.odds_ratio_loss(fake, mean_w, mean_l)[0]  # beta * log s(log odds); ORPO subtracts it
    assert torch.allclose(0.1 * preference.orpo_odds_ratio(mean_w, mean_l), -trl_term, atol=1e-6)


def test_robust_dpo_and_asft_by_hand():
    # margin 0.15 as above, e = 0.1: [0.9 L(0.15) - 0.1 L(-0.15)] / 0.8
    expected = (0.9 * neg_logsigmoid(0.15) - 0.1 * neg_logsigmoid(-0.15)) / 0.8
    assert preference.robust_dpo(W, L, RW, RL, 0.1, 0.1).item() == pytest.approx(expected)
    # ASFT on mean log-probs -0.5 (chosen) and -2 (rejected): L(-0.5) + L(2)
    assert preference.asft(torch.tensor([-0.5]), torch.tensor([-2.0])).item() == pytest.approx(
        neg_logsigmoid(-0.5) + neg_logsigmoid(2.0))
