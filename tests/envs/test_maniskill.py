"""ManiSkill 3 for real on this machine: CPU physics (one scene per env), SAPIEN on software Vulkan
(lavapipe, installed by `mmpost setup maniskill`), the scripted PickCube expert, subprocess workers,
and a missing Vulkan device named in one line."""

import os
import subprocess
import sys

import numpy as np
import pytest

from mmpost.envs.base import ChunkEnv
from mmpost.envs.maniskill import ManiSkillChunkEnv

SEEDS = [3, 4, 5, 6]


@pytest.fixture(scope="module")
def env():
    env = ManiSkillChunkEnv(4, "PickCube-v1", chunk_len=4, max_chunks=12)
    yield env
    env.close()


def test_reset_is_seeded_and_observations_have_the_interface_shapes(env):
    assert isinstance(env, ChunkEnv) and env.action_dim == 4  # end-effector xyz delta + gripper
    first = env.reset(SEEDS)
    assert first["state"].shape == (4, env.state_dim) and first["state"].dtype == np.float32
    assert first["instruction"] == ["pick up the cube and move it to the goal"] * 4
    assert np.array_equal(env.reset(SEEDS)["state"], first["state"])  # the seed fixes cube and goal
    assert not np.array_equal(env.reset(SEEDS[::-1])["state"], first["state"])


def test_the_scripted_expert_succeeds_by_maniskills_own_success():
    """PickCube's success (cube at the goal, robot still) comes from ManiSkill's info, not from us;
    the expert acts every control step (chunks of 1), and a success ends the episode."""
    env = ManiSkillChunkEnv(4, "PickCube-v1", chunk_len=1, max_chunks=48)
    first = env.reset(SEEDS)["state"]
    returns, ended = np.zeros(4), np.zeros(4, bool)
    for _ in range(env.max_chunks):
        obs, rewards, terminated, truncated, info = env.chunk_step(env.expert()[:, None])
        returns += rewards.sum(1)
        ended |= terminated
    # nothing of this episode leaks into the next one's first observation (ManiSkill's is_grasped is
    # read from the last physics step's contacts, which after a reset are the previous episode's)
    np.testing.assert_array_equal(env.reset(SEEDS)["state"], first)
    env.close()
    assert info["success"].sum() >= 3 and (returns > 0).all()  # the sparse success reward, once per success
    assert (ended == info["success"]).all()  # terminated exactly where ManiSkill says success


def test_a_finished_env_is_frozen_until_the_next_reset(env):
    env.reset(SEEDS)
    rng = np.random.default_rng(1)
    for _ in range(env.max_chunks):  # random actions until the time limit ends every episode
        obs, rewards, terminated, truncated, info = env.chunk_step(
            rng.uniform(-1, 1, (4, env.chunk_len, env.action_dim)).astype(np.float32))
    assert env.done.all() and truncated.any()
    frozen = obs["state"].copy()
    obs, rewards, terminated, truncated, _ = env.chunk_step(np.ones((4, env.chunk_len, env.action_dim), np.float32))
    assert np.array_equal(obs["state"], frozen) and (rewards == 0).all() and not (terminated | truncated).any()


def test_subprocess_workers_step_exactly_like_one_process(env):
    from mmpost.envs.subproc import SubprocChunkEnv

    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (3, 4, env.chunk_len, env.action_dim)).astype(np.float32)
    workers = SubprocChunkEnv(ManiSkillChunkEnv, 4, workers=2, env_id="PickCube-v1", chunk_len=4, max_chunks=12)
    try:
        outputs = []
        for stepper in (env, workers):
            states = [stepper.reset(SEEDS)["state"]]
            for chunk in actions:
                obs, rewards, *_ = stepper.chunk_step(chunk)
                states.append(obs["state"])
                states.append(rewards)
            outputs.append(states)
    finally:
        workers.close()
    for one, two in zip(*outputs):
        np.testing.assert_allclose(one, two, rtol=0, atol=1e-6)


def test_without_a_vulkan_device_the_error_says_how_to_get_one(tmp_path):
    """No GPU driver, no lavapipe, no VK_ICD_FILENAMES: one line naming `mmpost setup maniskill`."""
    env = {k: v for k, v in os.environ.items() if k not in ("VK_ICD_FILENAMES", "VK_DRIVER_FILES")}
    env["MMPOST_LAVAPIPE"] = str(tmp_path / "none")
    code = "from mmpost.envs.maniskill import ManiSkillChunkEnv; ManiSkillChunkEnv(1)"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    from mmpost.envs.vulkan import has_hardware_vulkan

    if has_hardware_vulkan():  # a GPU machine: the scene is created, nothing to explain
        assert result.returncode == 0, result.stderr[-2000:]
    else:
        assert result.returncode != 0 and "mmpost setup maniskill" in result.stderr.splitlines()[-1]
