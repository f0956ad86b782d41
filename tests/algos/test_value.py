"""The critic's (clipped) value loss, by hand."""

import torch

from mmpost.algos.value import value_loss


def test_value_loss_with_clipping_by_hand():
    values, old, returns = torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.0]), torch.tensor([2.0, 0.1])
    # first: unclipped (1-2)^2 = 1; clipped 0.5+0.2 = 0.7 -> (0.7-2)^2 = 1.69 -> max 1.69; second: 0.01
    loss = value_loss(values, old, returns, torch.ones(2), clip=0.2)
    assert torch.allclose(loss, torch.tensor(0.5 * (1.69 + 0.01) / 2))


def test_value_loss_normalised_by_the_whole_steps_transitions():
    """A data-parallel share's loss is its summed error over the mean count of transitions per process
    (so the average over processes is the whole batch's mean)."""
    values, returns = torch.tensor([1.0, 0.0]), torch.tensor([2.0, 0.0])
    loss = value_loss(values, values, returns, torch.ones(2), clip=0.0, transitions=torch.tensor(4.0))
    assert torch.allclose(loss, torch.tensor(0.5 * 1.0 / 4.0))
