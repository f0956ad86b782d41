"""KL estimators to the reference (k1, k2, k3, per sequence, full forward KL) and the entropy of
logits, by hand and against torch."""

import math

import pytest
import torch

from mmpost.algos.kl import kl_k3, sequence_kl


def test_k3_by_hand():
    # delta = ref - logp = -1 -> e^-1 + 1 - 1
    assert kl_k3(torch.tensor([0.0]), torch.tensor([-1.0])).item() == pytest.approx(math.exp(-1), abs=1e-7)


def test_sequence_kl_by_hand():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, 0.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, 9.0], [-1.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    # row 0: mean(0.5, -1.0) over its two masked steps; row 1: 0.5 on its one step
    assert torch.allclose(sequence_kl(logprobs, ref, mask), torch.tensor([-0.25, 0.5]))
    assert sequence_kl(logprobs, ref, torch.zeros_like(mask)).tolist() == [0.0, 0.0]


def test_k1_k2_by_hand():
    from mmpost.algos.kl import per_step_kl

    logp, ref = torch.tensor([-1.0]), torch.tensor([-1.5])
    assert per_step_kl(logp, ref, "k1").item() == pytest.approx(0.5)
    assert per_step_kl(logp, ref, "k2").item() == pytest.approx(0.125)
    assert per_step_kl(logp, ref, "k3").item() == pytest.approx(math.exp(-0.5) + 0.5 - 1)
    with pytest.raises(ValueError, match="k1, k2, k3"):
        per_step_kl(logp, ref, "k4")


def test_full_forward_kl_matches_torch_kl_div():
    from mmpost.algos.kl import full_forward_kl

    torch.manual_seed(0)
    logits, ref = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    expected = torch.nn.functional.kl_div(torch.log_softmax(logits, -1), torch.softmax(ref, -1),
                                          reduction="none").sum(-1)
    assert torch.allclose(full_forward_kl(logits, ref), expected, atol=1e-6)
    logits[..., 0] = ref[..., 0] = float("-inf")  # a suppressed token in both: contributes 0, not NaN
    expected = torch.nn.functional.kl_div(torch.log_softmax(logits[..., 1:], -1), torch.softmax(ref[..., 1:], -1),
                                          reduction="none").sum(-1)
    assert torch.allclose(full_forward_kl(logits, ref), expected, atol=1e-6)


def test_entropy_of_logits_by_hand():
    from mmpost.algos.kl import entropy

    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0, float("-inf")]])  # uniform over 4, one token suppressed
    assert entropy(logits).item() == pytest.approx(math.log(4))
