"""Rejection-sampling fine-tuning: which sampled outputs are kept."""

import torch


def test_rft_keeps_solved_top_k():
    from mmpost.stages.rft import kept_outputs

    rewards = torch.tensor([0.9, 1.0, 0.2, 1.0, float("nan"), 0.95])
    group = torch.tensor([0, 0, 0, 1, 1, 1])
    assert kept_outputs(rewards, group, 0.9, 0).tolist() == [True, True, False, True, False, True]
    assert kept_outputs(rewards, group, 0.9, 1).tolist() == [False, True, False, True, False, False]
