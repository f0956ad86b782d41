"""FlowActionPolicy on the real MuJoCo reach scene: exact log-prob recomputation, the ODE limit
of Flow-SDE, the learned-noise range and the direction of a policy-gradient step."""

import pytest
import torch

from mmpost.adapters.flow_policy import FlowActionPolicy
from mmpost.algos.pg import clipped_pg_loss
from mmpost.config import EnvConfig, FlowConfig
from mmpost.envs.reach import ReachVecEnv

ROWS = [{"seed": s} for s in range(6)]


def make_policy(dtype=torch.float64, **flow):
    torch.manual_seed(0)
    env = ReachVecEnv(12, chunk_len=4, max_chunks=4)
    policy = FlowActionPolicy.build(env, FlowConfig(hidden=64, **flow), EnvConfig())
    policy.model.to(dtype)
    return policy


@pytest.mark.parametrize("method", ["flow_sde", "flow_noise"])
@pytest.mark.parametrize("level", ["chunk", "element"])
def test_recomputed_logprobs_equal_sampled(method, level):
    policy = make_policy(noise_method=method, logprob_level=level)
    rollout = policy.rollout(ROWS, 2)
    steps = 1 if level == "chunk" else 4 * 2
    assert rollout.logprobs.shape == (12, 4 * steps)
    assert rollout.mask.sum() > 0 and torch.isfinite(rollout.logprobs).all()
    with torch.no_grad():
        recomputed = policy.logprobs(rollout)
    assert torch.allclose(recomputed, rollout.logprobs, atol=1e-6, rtol=0)
    # minibatches recompute the same values
    part = rollout.subset(torch.tensor([3, 0, 7]))
    with torch.no_grad():
        assert torch.allclose(policy.logprobs(part), part.logprobs, atol=1e-6, rtol=0)


def test_float32_recompute_is_close():
    policy = make_policy(dtype=torch.float32, noise_method="flow_noise")
    rollout = policy.rollout(ROWS, 1)
    with torch.no_grad():
        assert torch.allclose(policy.logprobs(rollout), rollout.logprobs, atol=1e-4, rtol=1e-5)


def test_flow_sde_with_zero_noise_is_the_ode():
    sde = make_policy(noise_method="flow_sde", noise_level=0.0)
    context = torch.randn(5, 64, dtype=torch.float64)
    torch.manual_seed(1)
    chain_sde, _, logp = sde._sample(context, greedy=False)
    torch.manual_seed(1)
    chain_ode, step, _ = sde._sample(context, greedy=True)
    assert torch.equal(chain_sde[:, 0], chain_ode[:, 0])
    assert torch.allclose(chain_sde, chain_ode) and (step == -2).all()


def test_flow_sde_has_exactly_one_stochastic_step_per_chunk():
    policy = make_policy(noise_method="flow_sde")
    chain, step, _ = policy._sample(torch.randn(64, 64, dtype=torch.float64), greedy=False)
    assert ((step >= 0) & (step < 4)).all() and len(step.unique()) > 1  # per sample, not per batch


def test_flow_noise_std_stays_in_range():
    policy = make_policy(noise_method="flow_noise", noise_std_range=[0.08, 0.16])
    std = policy.model.noise_std(torch.randn(32, 64, dtype=torch.float64) * 100)
    assert std.min() >= 0.08 - 1e-9 and std.max() <= 0.16 + 1e-9


@pytest.mark.parametrize("method", ["flow_sde", "flow_noise"])
def test_policy_gradient_raises_logprob_of_positive_advantages(method):
    policy = make_policy(noise_method=method)
    rollout = policy.rollout(ROWS, 2)
    advantages = torch.tensor([1.0, -1.0] * 6)
    optimizer = torch.optim.Adam(policy.model.parameters(), lr=1e-3)
    for _ in range(3):
        loss, _ = clipped_pg_loss(policy.logprobs(rollout), rollout.logprobs, advantages, rollout.mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        change = ((policy.logprobs(rollout) - rollout.logprobs) * rollout.mask).sum(1)
    assert change[advantages > 0].mean() > 0 > change[advantages < 0].mean()


def test_values_and_rollout_bookkeeping():
    policy = make_policy()
    rollout = policy.rollout(ROWS, 2)
    assert rollout.group.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert rollout.values.shape == rollout.alive.shape == rollout.step_rewards.shape == (12, 4)
    assert torch.allclose(policy.values(rollout).detach(), rollout.values.double() * rollout.alive, atol=1e-6)
    for output, alive, rewards in zip(rollout.outputs, rollout.alive, rollout.step_rewards):
        assert output["chunks"] == int(alive.sum()) and output["return"] == float(rewards.sum())
        assert output["success"] == (output["return"] > 0)
    assert {"time/simulate", "time/infer", "env/success"} <= set(rollout.metrics)


def test_sft_loss_decreases_on_demonstrations(mmpost_home):
    from mmpost.tasks.reach import Reach

    cfg = Reach.default_config()
    cfg.data.demos = 4
    demos = Reach(cfg).rows("demos")
    assert demos and demos[0]["actions"].shape == (8, 2)
    policy = make_policy(dtype=torch.float32)
    optimizer = torch.optim.Adam(policy.model.parameters(), lr=1e-3)
    torch.manual_seed(0)
    average = lambda: sum(policy.sft_loss(demos)[0].item() for _ in range(10)) / 10  # noqa: E731
    first = average()
    for _ in range(150):
        loss, _ = policy.sft_loss(demos)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert average() < 0.7 * first


def test_state_normalisation_uses_the_demonstrations_statistics_and_is_saved(tmp_path):
    """flow.normalize_state: the encoder sees (state - mean) / std of the demonstrations (std floored at
    1e-2), and a saved policy standardises the same way after loading."""
    import numpy as np

    from mmpost.adapters.flow_policy import state_statistics
    from mmpost.models.flow_action import FlowActionModel

    rows = [{"state": np.array([1.0, 5.0, 2.0])}, {"state": np.array([3.0, 5.0, 6.0])}]
    stats = state_statistics(rows)
    assert stats["state_mean"] == [2.0, 5.0, 4.0] and stats["state_std"] == pytest.approx([1.0, 0.01, 2.0])  # by hand

    env = ReachVecEnv(2)
    flow = FlowConfig(hidden=32, normalize_state=True)
    demos = [{"state": np.random.default_rng(i).normal(3.0, 2.0, env.state_dim).astype(np.float32)} for i in range(8)]
    policy = FlowActionPolicy.build(env, flow, EnvConfig(num_envs=2), demos=lambda: demos)
    plain = FlowActionModel({k: v for k, v in policy.model.config.items() if k not in ("state_mean", "state_std")})
    plain.load_state_dict(policy.model.state_dict())
    obs = {"state": torch.randn(2, env.state_dim) * 3 + 1, "instruction": ["touch the red ball"] * 2}
    mean, std = (torch.tensor(policy.model.config[k]) for k in ("state_mean", "state_std"))
    standardised = {**obs, "state": (obs["state"] - mean) / std}
    torch.testing.assert_close(policy.model.encode(obs), plain.encode(standardised))
    policy.model.save_pretrained(tmp_path / "saved")
    loaded = FlowActionModel.from_pretrained(tmp_path / "saved")
    torch.testing.assert_close(loaded.encode(obs), policy.model.encode(obs))
    assert not FlowActionPolicy.build(env, FlowConfig(hidden=32), EnvConfig(num_envs=2), demos=lambda: demos).model.normalize


def test_greedy_rollouts_are_repeatable_and_paired_by_episode_seed():
    """The ODE sampler's initial noise comes from each episode's seed: the same episodes give the same
    chunks every time (an evaluation is repeatable, and two models meet the same noise)."""
    env = ReachVecEnv(4)
    policy = FlowActionPolicy.build(env, FlowConfig(hidden=32), EnvConfig(num_envs=4))
    rows = [{"seed": 10_000_000 + i} for i in range(6)]  # two waves of 4 envs
    with torch.no_grad():
        one, two = (policy.rollout(rows, 1, greedy=True) for _ in range(2))
        sampled = policy.rollout(rows, 1, greedy=False)
    torch.testing.assert_close(one.actions.chains, two.actions.chains, rtol=0, atol=0)
    assert not torch.equal(one.actions.chains, sampled.actions.chains)
