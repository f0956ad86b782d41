"""Rejection-sampling fine-tuning: which sampled outputs are kept."""

import torch


def test_rft_keeps_solved_top_k():
    from mmpost.stages.rft import kept_outputs

    rewards = torch.tensor([0.9, 1.0, 0.2, 1.0, float("nan"), 0.95])
    group = torch.tensor([0, 0, 0, 1, 1, 1])
    assert kept_outputs(rewards, group, 0.9, 0).tolist() == [True, True, False, True, False, True]
    assert kept_outputs(rewards, group, 0.9, 1).tolist() == [False, True, False, True, False, False]


def test_superhf_keeps_the_top_1_of_every_prompt_even_unsolved():
    """SuperHF's best-of-n: the highest-rewarded sample of every prompt, whether or not it reaches
    the solved threshold (unscorable samples never); the recipe sets exactly that."""
    import mmpost
    from mmpost.stages.rft import kept_outputs

    rewards = torch.tensor([0.1, 0.3, 0.2, float("nan"), 0.05, float("nan")])
    group = torch.tensor([0, 0, 0, 1, 1, 2])
    assert kept_outputs(rewards, group, 1.0, 1, require_solved=False).tolist() == [False, True, False, False, True, False]
    assert not kept_outputs(rewards, group, 1.0, 1).any()  # FARE's rule keeps none of them
    stage = mmpost.build_config("arithmetic", recipe="superhf").stage("rft")
    assert (stage.rejection.top_k, stage.rejection.require_solved, stage.kl.coef) == (1, False, 0.1)
