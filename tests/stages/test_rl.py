"""The RL stage's own bookkeeping: outcome rewards as per-step rewards (ReFT, KL in the reward) and the
advantages with the KL term in them (Carve3D)."""

from types import SimpleNamespace

import pytest
import torch


def test_outcome_reward_on_the_last_token_with_kl_in_the_reward():
    """ReFT: the outcome reward lands on the last real token, -beta * (log p_old - log p_ref) on every token."""
    from types import SimpleNamespace

    from mmpost.stages.rl import outcome_as_step_rewards
    from mmpost.types import Rollout

    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    rollout = Rollout(logprobs=torch.tensor([[-1.0, -2.0, -1.0], [-0.5, 0.0, 0.0]]), mask=mask,
                      group=torch.tensor([0, 1]), outputs=["a", "b"], prompts=["p", "q"], columns={}, actions=None,
                      rewards=torch.tensor([1.0, 0.1]),
                      ref_logprobs=torch.tensor([[-1.5, -2.0, -0.5], [-0.5, 0.0, 0.0]]))
    policy = SimpleNamespace(values=lambda r: torch.full((2, 3), 0.5) * r.mask)
    outcome_as_step_rewards(rollout, policy, kl_coef=0.1)
    # row 0: KL terms -0.1 * (0.5, 0, -0.5) = (-0.05, 0, 0.05), reward 1 on step 3; row 1: 0.1 on step 1
    assert torch.allclose(rollout.step_rewards, torch.tensor([[-0.05, 0.0, 1.05], [0.1, 0.0, 0.0]]))
    assert torch.equal(rollout.alive, mask) and rollout.bootstrap.tolist() == [0.0, 0.0]
    assert torch.allclose(rollout.values, torch.tensor([[0.5, 0.5, 0.5], [0.5, 0.0, 0.0]]))


def test_kl_in_the_advantage_is_carve3d_normalised_difference():
    """Carve3D: A = z(r) - beta * z(KL) within each prompt's group."""
    from mmpost.algos.advantages import group_advantages
    from mmpost.stages import compute_advantages
    from mmpost.stages.spec import KL, Sampling, Stage

    rewards, group = torch.tensor([1.0, 2.0, 4.0, 0.0]), torch.tensor([0, 0, 1, 1])
    logprobs = torch.tensor([[-1.0, -1.0], [-1.0, -1.0], [-2.0, -2.0], [-1.0, -1.0]])
    ref = torch.tensor([[-1.2, -1.0], [-1.0, -1.0], [-2.0, -3.0], [-1.0, -1.0]])
    rollout = SimpleNamespace(rewards=rewards, group=group, logprobs=logprobs, ref_logprobs=ref, mask=torch.ones(4, 2))
    compute_advantages(rollout, Stage(kind="rl", batch_size=2,
                                      kl=KL(coef=0.2, where="advantage"),
                                      sampling=Sampling(group_size=2)))
    kl = torch.tensor([0.1, 0.0, 0.5, 0.0])  # mean over steps of logp - ref
    z = lambda v: group_advantages(v, group)  # noqa: E731
    assert torch.allclose(rollout.advantages, z(rewards) - 0.2 * z(kl))
    # in the loss instead (the default), advantages are the rewards' alone
    compute_advantages(rollout, Stage(kind="rl", batch_size=2,
                                      kl=KL(coef=0.2),
                                      sampling=Sampling(group_size=2)))
    assert torch.allclose(rollout.advantages, z(rewards))


def test_rollouts_sampled_in_calls_merge_their_metrics():
    """A step sampled in several calls (``generation_batch``): times and env steps add up, running
    counts keep the latest, rates are the mean over all outputs (a part without a metric does not dilute it)."""
    from mmpost.types import Rollout

    def part(n, metrics):
        return Rollout(logprobs=torch.zeros(n, 2), mask=torch.ones(n, 2), group=torch.arange(n), outputs=["o"] * n,
                       prompts=["p"] * n, columns={}, actions=None, metrics=metrics)

    merged = Rollout.concat([
        part(3, {"time/simulate": 1.0, "env/steps": 30.0, "env/success": 1 / 3, "env/worker_restarts": 1.0}),
        part(1, {"time/simulate": 0.5, "env/steps": 8.0, "env/success": 1.0, "env/worker_restarts": 2.0}),
        part(2, {})]).metrics
    assert merged == {"time/simulate": 1.5, "env/steps": 38.0, "env/success": pytest.approx(0.5),
                      "env/worker_restarts": 2.0}
