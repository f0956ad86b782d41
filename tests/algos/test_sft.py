"""SFT token-weight functions and their relatives, against their formulas on hand-computed inputs."""

import math

import pytest
import torch

from mmpost.algos.sft import poft_loss, sstoken_mask, token_weights, weighted_nll

LOGP = torch.log(torch.tensor([[0.5, 0.25, 0.9]]))
MASK = torch.tensor([[1.0, 1.0, 0.0]])


def test_token_weights_by_hand():
    assert torch.allclose(token_weights(LOGP, "uniform"), torch.ones(1, 3))
    assert torch.allclose(token_weights(LOGP, "dft"), torch.tensor([[0.5, 0.25, 0.9]]))
    assert torch.allclose(token_weights(LOGP, "chord"), torch.tensor([[0.25, 0.1875, 0.09]]))
    with pytest.raises(ValueError, match="uniform, dft, chord"):
        token_weights(LOGP, "dtf")


def test_weighted_nll_by_hand_and_its_gradient_is_dft():
    logp = LOGP.clone().requires_grad_(True)
    loss = weighted_nll(logp, MASK, "dft")
    # (0.5 * log 2 + 0.25 * log 4) / 2 real tokens; the masked 0.9 does not count
    assert loss.item() == pytest.approx((0.5 * math.log(2) + 0.25 * math.log(4)) / 2)
    loss.backward()  # weights are detached: d/dlogp = -p / N, i.e. the gradient of -p (DFT's point)
    assert torch.allclose(logp.grad, torch.tensor([[-0.25, -0.125, 0.0]]))


def test_sstoken_keeps_the_top_excess_loss_tokens():
    logp = torch.log(torch.tensor([[0.5, 0.4, 0.9], [0.2, 0.6, 0.1]]))
    history = torch.log(torch.tensor([[0.25, 0.4, 0.1], [0.1, 0.4, 0.1]]))
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    # REL = log p - log p_hist per sample: [log 2, 0 | pad] and [log 2, log 1.5, 0]; min-max normalised
    # [1, 0] and [1, 0.585, 0]; ceil(0.4 * 2) = 1 and ceil(0.4 * 3) = 2 tokens kept per sample
    kept = sstoken_mask(logp, history, mask, 0.4)
    assert kept.tolist() == [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]
    # with the attention half, gamma = 0.25: scores 0.25 * REL_norm + 0.75 * attention
    # sample 0: [0.25 + 0.075, 0 + 0.675] -> token 1; sample 1: [0.25, 0.146, 0.675] -> tokens 2 and 0
    attention = torch.tensor([[0.1, 0.9, 0.5], [0.0, 0.0, 0.9]])
    kept = sstoken_mask(logp, history, mask, 0.4, attention, gamma=0.25)
    assert kept.tolist() == [[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]]


def test_poft_by_hand():
    logp = torch.log(torch.tensor([[0.5, 0.5]]))
    ref = torch.log(torch.tensor([[0.25, 0.25]]))
    # s_theta - s_ref = log 2: loss = -log sigmoid(log 2) = log(1 + 1/2)
    assert poft_loss(logp, ref, torch.ones(1, 2)).item() == pytest.approx(math.log(1.5))


def test_fait_weights_by_hand():
    """Two levels: a gold line the faulty answer changed weighs 1 + line_alpha, the tokens in it that
    differ 1 + line_alpha + alpha; a line both share weighs 1 even where its position moved."""
    from mmpost.algos.sft import fait_weights

    # gold lines: (5, 6, 10) (7, 8, 10) (3, 0); the faulty answer changes token 6 -> 9 in line 0 and
    # inserts a line before the last one
    gold = torch.tensor([[5, 6, 10, 7, 8, 10, 3, 0]])
    gold_lines = torch.tensor([[0, 0, 0, 1, 1, 1, 2, 2]])
    faulty = torch.tensor([[5, 9, 10, 7, 8, 10, 4, 10, 3, 0]])
    faulty_lines = torch.tensor([[0, 0, 0, 1, 1, 1, 2, 2, 3, 3]])
    weights = fait_weights(gold, torch.ones(1, 8), gold_lines, faulty, torch.ones(1, 10), faulty_lines,
                           alpha=2.0, line_alpha=0.5)
    assert weights.tolist() == [[1.5, 3.5, 1.5, 1.0, 1.0, 1.0, 1.0, 1.0]]
    # a gold line with no counterpart (deleted in the faulty answer): every token differs
    weights = fait_weights(gold[:, :6], torch.ones(1, 6), gold_lines[:, :6], gold[:, :3], torch.ones(1, 3),
                           gold_lines[:, :3], alpha=2.0, line_alpha=0.5)
    assert weights.tolist() == [[1.0, 1.0, 1.0, 3.5, 3.5, 3.5]]
    # padding keeps weight 1 (its mask is 0)
    padded = fait_weights(torch.tensor([[5, 0]]), torch.tensor([[1.0, 0.0]]), torch.zeros(1, 2, dtype=torch.long),
                          torch.tensor([[9]]), torch.ones(1, 1), torch.zeros(1, 1, dtype=torch.long))
    assert padded.tolist() == [[2.5, 1.0]]


def test_ift_loss_by_hand():
    from mmpost.algos.sft import ift_loss

    logp = torch.log(torch.tensor([[0.5, 0.25, 0.9]]))
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    # per-token -log p / |y|: a = log2 / 2, b = log4 / 2; w = [a + 0.5 b, b] rescaled to sum 2
    a, b = math.log(2) / 2, math.log(4) / 2
    w = torch.tensor([a + 0.5 * b, b])
    w = w * 2 / w.sum()
    expected = (w[0] * math.log(2) + w[1] * math.log(4)) / 2
    assert ift_loss(logp, mask, gamma=0.5).item() == pytest.approx(float(expected))


def test_otr_loss_by_hand():
    """One-Token Rollout: reward 1 for a sampled gold token, beta for any other, no baseline; a position
    with no hit still pushes its sampled wrong tokens down (the term the mean-baseline version lacked)."""
    from mmpost.algos.sft import otr_loss, sample_candidates

    log_probs = torch.log(torch.tensor([[[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]])).requires_grad_()
    targets = torch.tensor([[0, 2]])
    candidates = torch.tensor([[[0, 1, 0, 2], [1, 1, 0, 0]]])  # position 1: no candidate is the demo token
    beta = -0.1
    first = -(2 * math.log(0.5) + beta * math.log(0.3) + beta * math.log(0.2)) / 4
    second = -(beta * 2 * math.log(0.1) + beta * 2 * math.log(0.1)) / 4
    loss = otr_loss(log_probs, candidates, targets, torch.ones(1, 2), miss_reward=beta)
    assert loss.item() == pytest.approx((first + second) / 2)  # token mean over the two positions
    loss.backward()
    assert log_probs.grad[0, 1].abs().sum() > 0  # the no-hit position is trained
    # with beta = 0 and every candidate a hit, OTR is NLL weighted by the hit rate
    all_hits = torch.tensor([[[0, 0, 0, 0], [2, 2, 2, 2]]])
    assert otr_loss(log_probs, all_hits, targets, torch.ones(1, 2), 0.0).item() == pytest.approx(
        -(math.log(0.5) + math.log(0.8)) / 2)
    torch.manual_seed(0)
    drawn = sample_candidates(torch.log(torch.tensor([[[0.0, 1.0, 0.0]]]) + 1e-30), 5)
    assert drawn.tolist() == [[[1, 1, 1, 1, 1]]]


def test_otr_expectation_is_dft_at_temperature_one():
    """With K -> inf at temperature 1 and beta = 0, OTR's gradient is DFT's, sg(p) grad log p (the
    paper's section relating the two)."""
    from mmpost.algos.sft import otr_loss, sample_candidates, weighted_nll

    torch.manual_seed(0)
    logits = torch.randn(1, 3, 5, requires_grad=True)
    targets = torch.tensor([[1, 3, 0]])
    log_probs = torch.log_softmax(logits, -1)
    candidates = sample_candidates(logits, 200_000)
    otr_grad, = torch.autograd.grad(otr_loss(log_probs, candidates, targets, torch.ones(1, 3), 0.0), logits)
    gold = torch.log_softmax(logits, -1).gather(2, targets.unsqueeze(-1)).squeeze(-1)
    dft_grad, = torch.autograd.grad(weighted_nll(gold, torch.ones(1, 3), "dft"), logits)
    assert torch.allclose(otr_grad, dft_grad, atol=2e-3)


def test_qtuning_quadrants_by_hand():
    from mmpost.algos.sft import qtuning_mask

    # four samples, one per quadrant of (perplexity, entropy); split at the median of each
    p = torch.tensor([[0.9, 0.9, 0.9, 0.9],     # low error, low uncertainty: redundant -> dropped
                      [0.9, 0.9, 0.9, 0.9],     # low error, high uncertainty: calibration -> kept whole
                      [0.1, 0.9, 0.05, 0.9],    # high error, low uncertainty: misconception -> top tokens
                      [0.1, 0.1, 0.1, 0.1]])    # high error, high uncertainty: noise -> dropped
    entropy = torch.tensor([[0.1] * 4, [2.0] * 4, [0.1] * 4, [2.0] * 4])
    mask = torch.ones(4, 4)
    # half the batch kept: the bisection ends at the median split; tokens by perplexity alone (lambda 0)
    keep = qtuning_mask(torch.log(p), entropy, mask, sample_keep=0.5, token_keep=0.5, neighbour_weight=0.0)
    assert keep.tolist() == [[0, 0, 0, 0], [1, 1, 1, 1], [1, 0, 1, 0], [0, 0, 0, 0]]
    # lambda 0.5: token perplexities 10, 1.1, 20, 1.1 -> scores 5.56, 15.56, 11.11, 10.56: the tokens
    # between the two errors are the salient ones
    keep = qtuning_mask(torch.log(p), entropy, mask, sample_keep=0.5, token_keep=0.5, neighbour_weight=0.5)
    assert keep[2].tolist() == [0, 1, 1, 0]


def test_qtuning_bisects_its_thresholds_to_the_sample_budget():
    """A quarter of 16 samples: the bisection narrows the quadrants until about 4 are kept, and only
    from the misconception and calibration corners."""
    from mmpost.algos.sft import qtuning_mask

    torch.manual_seed(0)
    logprobs = -torch.rand(16, 6) * 3
    entropy = torch.rand(16, 6) * 2
    mask = torch.ones(16, 6)
    kept = (qtuning_mask(logprobs, entropy, mask, sample_keep=0.25).sum(-1) > 0).sum().item()
    assert kept == 4
    wide = (qtuning_mask(logprobs, entropy, mask, sample_keep=1.0).sum(-1) > 0).sum().item()
    assert 4 < wide < 16  # even the median split drops the noise and redundant corners


def test_poft_weights_each_sample_by_how_likely_the_reference_finds_it():
    """With reference scores s_ref (aligned models, their own tokenizers), d loss / d s_theta_i =
    -sigmoid(s_ref_i - s_theta_i) / B: a demonstration the references find likely pulls harder."""
    logp = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5]])).requires_grad_(True)
    mask = torch.ones(2, 2)
    ref_scores = torch.tensor([math.log(0.9), math.log(0.1)])  # likely vs unlikely under the references
    poft_loss(logp, None, mask, ref_scores).backward()
    s_theta = math.log(0.5)
    for i, s_ref in enumerate(ref_scores.tolist()):
        weight = 1 / (1 + math.exp(-(s_ref - s_theta)))
        assert logp.grad[i].sum().item() == pytest.approx(-weight / 2, abs=1e-6)  # (the mean over B = 2)
    assert abs(logp.grad[0].sum()) > 3 * abs(logp.grad[1].sum())  # 0.643 vs 0.167
