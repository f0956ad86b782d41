"""The MuJoCo reach scene behind the chunk interface: seeding, success, chunk semantics,
auto-reset, rendering, and the gymnasium and subprocess back-ends stepping identically."""

import numpy as np
import pytest

from mmpost.envs.base import HELDOUT_SEED_OFFSET, ChunkEnv
from mmpost.envs.reach import COLORS, HELDOUT_TEMPLATES, ReachVecEnv, episode_spec

SEEDS = [11, 12, 13, 14, 15, 16]


def noisy_expert_chunks(env, rng, noise=0.3):
    return np.clip(np.repeat(env.expert()[:, None], env.chunk_len, 1)
                   + rng.normal(0, noise, (env.num_envs, env.chunk_len, env.action_dim)), -1, 1)


def test_reset_is_seeded_and_instruction_names_the_goal():
    a, b = ReachVecEnv(6), ReachVecEnv(6)
    assert isinstance(a, ChunkEnv)
    obs_a, obs_b = a.reset(SEEDS), b.reset(SEEDS)
    assert np.array_equal(obs_a["state"], obs_b["state"]) and obs_a["instruction"] == obs_b["instruction"]
    assert not np.array_equal(a.reset(SEEDS[::-1])["state"], obs_a["state"])
    for seed, text in zip(SEEDS, obs_a["instruction"]):
        assert list(COLORS)[episode_spec(seed)["goal"]] in text
    heldout = [episode_spec(HELDOUT_SEED_OFFSET + i)["instruction"] for i in range(40)]
    assert any(t.startswith(HELDOUT_TEMPLATES[0].split("{")[0]) for t in heldout)


def test_scripted_expert_solves_the_scene():
    env = ReachVecEnv(32, chunk_len=1, max_chunks=32)
    env.reset(list(range(32)))
    for _ in range(32):
        *_, info = env.chunk_step(env.expert()[:, None])
    assert info["success"].mean() >= 0.95


def test_chunk_semantics_success_freezes_and_truncation():
    env = ReachVecEnv(6, chunk_len=4, max_chunks=6)
    env.reset(SEEDS)
    rng = np.random.default_rng(0)
    frozen = {}
    total_reward = np.zeros(6)
    for c in range(6):
        obs, rewards, terminated, truncated, info = env.chunk_step(noisy_expert_chunks(env, rng, 0.1))
        assert rewards.shape == (6, 4)
        total_reward += rewards.sum(1)
        for i in np.flatnonzero(terminated):
            assert rewards[i].sum() == 1.0 and info["success"][i]
            frozen[i] = obs["state"][i].copy()
        for i, state in frozen.items():
            assert np.array_equal(obs["state"][i], state)  # finished envs do not move
    assert np.array_equal(total_reward, info["success"].astype(float))  # one reward per success
    assert env.done.all() and (env.steps <= 24).all()
    with pytest.raises(ValueError, match="actions must be"):
        env.chunk_step(np.zeros((6, 3, 2)))
    with pytest.raises(ValueError, match="NaN"):
        env.chunk_step(np.full((6, 4, 2), np.nan))


def test_autoreset_only_after_the_whole_chunk():
    env = ReachVecEnv(4, chunk_len=4, max_chunks=1, autoreset=True)
    first = env.reset([1, 2, 3, 4])
    obs, rewards, terminated, truncated, info = env.chunk_step(np.zeros((4, 4, 2)))
    assert (terminated | truncated).all() and "final_obs" in info
    assert not np.array_equal(info["final_obs"]["state"], obs["state"])  # fresh episodes now
    assert not env.done.any() and (env.steps == 0).all()
    assert not np.array_equal(obs["state"], first["state"])


def test_images_show_the_scene():
    env = ReachVecEnv(2, obs="image", image_size=48)
    obs = env.reset([1, 2])
    assert obs["image"].shape == (2, 48, 48, 3) and obs["image"].dtype == np.uint8
    assert obs["state"].shape == (2, env.state_dim) == (2, 8)  # target positions only in the picture
    red = (obs["image"][..., 0] > 200) & (obs["image"][..., 1] < 80) & (obs["image"][..., 2] < 80)
    assert red.any(axis=(1, 2)).all()  # the red target is visible in both
    env.close()


def test_gymnasium_and_subprocess_backends_step_identically():
    from gymnasium.vector import AutoresetMode, SyncVectorEnv

    from mmpost.envs.gym_adapter import GymChunkEnv, reach_gym_env
    from mmpost.envs.subproc import SubprocChunkEnv

    native = ReachVecEnv(6, chunk_len=4, max_chunks=5)
    gym_env = GymChunkEnv(SyncVectorEnv([lambda: reach_gym_env(max_chunks=5) for _ in range(6)],
                                        autoreset_mode=AutoresetMode.DISABLED), chunk_len=4, max_chunks=5)
    workers = SubprocChunkEnv(ReachVecEnv, 6, workers=2, chunk_len=4, max_chunks=5)
    try:
        envs = [native, gym_env, workers]
        observations = [e.reset(SEEDS) for e in envs]
        rng = np.random.default_rng(0)
        for _ in range(5):
            actions = noisy_expert_chunks(native, rng)
            results = [e.chunk_step(actions) for e in envs]
            for obs, rewards, terminated, truncated, info in results[1:]:
                ref = results[0]
                assert np.allclose(obs["state"], ref[0]["state"], atol=1e-5)
                assert obs["instruction"] == ref[0]["instruction"]
                assert np.array_equal(rewards, ref[1]) and np.array_equal(terminated, ref[2])
                assert np.array_equal(truncated, ref[3]) and np.array_equal(info["success"], ref[4]["success"])
        assert results[0][4]["success"].any()
    finally:
        workers.close()
        gym_env.close()


def test_gym_adapter_refuses_autoreset():
    from gymnasium.vector import SyncVectorEnv

    from mmpost.envs.gym_adapter import GymChunkEnv, reach_gym_env

    with pytest.raises(ValueError, match="autoreset_mode"):
        GymChunkEnv(SyncVectorEnv([reach_gym_env]), chunk_len=4, max_chunks=2)
