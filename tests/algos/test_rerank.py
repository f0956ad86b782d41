"""The reranking objectives (SFT vs contrastive, arXiv 2510.14824) and ranking metrics by hand."""

import math

import pytest
import torch

from mmpost.algos.rerank import listwise_loss, pointwise_loss, ranking_metrics, ranking_scores


def test_pointwise_loss_by_hand():
    yes = torch.tensor([[2.0, 0.0, 1.0]], requires_grad=True)
    no = torch.tensor([[0.0, 1.0, 1.0]])
    # pair 0 relevant: -log s(2 - 0); pairs 1, 2 irrelevant: -log s(no - yes) = -log s(1), -log s(0); summed
    expected = -math.log(1 / (1 + math.exp(-2))) - math.log(1 / (1 + math.exp(-1))) - math.log(0.5)
    loss = pointwise_loss(yes, no)
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    # d/dyes of -log s(yes - no) is -(1 - s(2)); of -log s(no - yes) is s(yes - no)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert yes.grad[0].tolist() == pytest.approx([-(1 - sig(2)), sig(-1), sig(0)])


def test_listwise_loss_by_hand():
    yes = torch.tensor([[2.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    first = -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(1)))
    assert listwise_loss(yes).item() == pytest.approx((first + math.log(3)) / 2)
    assert listwise_loss(yes, temperature=0.5).item() == pytest.approx(listwise_loss(yes * 2).item())


def test_scores_and_metrics_by_hand():
    yes, no = torch.tensor([[1.0, 3.0, 0.0], [2.0, 1.0, 1.0]]), torch.tensor([[-2.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    sft = ranking_scores(yes, no, "sft")  # log-odds: [3, 1, 0] and [2, 1, 1]
    assert ranking_metrics(sft) == {"mrr": 1.0, "recall@1": 1.0}
    contrastive = ranking_scores(yes, no, "contrastive")  # yes alone: [1, 3, 0] -> rank 2; [2, 1, 1] -> 1
    assert ranking_metrics(contrastive) == pytest.approx({"mrr": 0.75, "recall@1": 0.5})
    tie = ranking_metrics(torch.tensor([[1.0, 1.0]]))  # a tie counts against the relevant candidate
    assert tie == {"mrr": 0.5, "recall@1": 0.0}
