"""LIBERO for real, through the path users take: ``mmpost setup libero`` (the README's test command
runs it) makes a private environment with robosuite 1.4 and mujoco < 3.4 and unpacks LIBERO's data
from a local copy; the envs run in worker processes of that environment (this process keeps its own
mujoco and never imports robosuite)."""

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from mmpost.config import EnvConfig
from mmpost.envs import libero_install
from mmpost.envs.base import make_env

RECORDED = Path(__file__).parents[1] / "fixtures" / "libero" / "libero_object_3_scripted.hdf5"

pytestmark = [
    pytest.mark.skipif(not libero_install.ENV.installed(), reason="LIBERO not set up: run `mmpost setup libero` "
                       "(the README's test command does)"),
    pytest.mark.skipif(libero_install.data_root() is None, reason="no copy of LIBERO's data on this machine (never "
                       "downloaded): `mmpost setup libero --data TARBALL_OR_FOLDER` unpacks one"),
]


@pytest.fixture(scope="module")
def env():
    env = make_env(EnvConfig(name="libero:libero_object/3", obs="image", image_size=64, chunk_len=1, max_chunks=12,
                             num_envs=2))
    yield env
    env.close()


def test_runs_in_the_private_environment_with_the_interface_shapes(env):
    assert type(env).__name__ == "SubprocChunkEnv" and "robosuite" not in sys.modules  # not in this process
    assert env.action_dim == 7 and env.state_dim == 8
    obs = env.reset([0, 1])
    assert obs["state"].shape == (2, 8) and obs["image"].shape == (2, 64, 64, 3) and obs["image"].dtype == np.uint8
    assert obs["instruction"] == ["pick up the bbq sauce and place it in the basket"] * 2
    np.testing.assert_array_equal(env.reset([0, 1])["state"], obs["state"])  # a seed is a benchmark init state
    assert not np.array_equal(env.reset([1, 0])["state"], obs["state"])


def test_replaying_recorded_actions_reproduces_the_recorded_episodes(env):
    """The fixture was recorded with LIBERO itself from init states 0 and 1: the same actions from the
    same init states give the same robot states (MuJoCo is deterministic) and the same camera images."""
    with h5py.File(RECORDED) as file:
        demos = [file[f"data/demo_{i}"] for i in range(2)]
        actions = np.stack([np.asarray(d["actions"]) for d in demos])
        states = np.stack([np.concatenate([d["obs"]["ee_pos"], d["obs"]["ee_ori"], d["obs"]["gripper_states"]], 1)
                           for d in demos])
        images = np.stack([np.asarray(d["obs"]["agentview_rgb"]) for d in demos])
    obs = env.reset([0, 1])
    for t in range(actions.shape[1]):
        np.testing.assert_allclose(obs["state"], states[:, t], atol=1e-5, err_msg=f"step {t}")
        assert np.abs(obs["image"][:, ::-1, ::-1].astype(int) - images[:, t]).mean() < 1.0, f"step {t}"
        obs, rewards, terminated, truncated, info = env.chunk_step(actions[:, t, None])
    assert rewards.shape == (2, 1) and not info["success"].any()  # lowering the gripper picks nothing up


def test_state_observations_hold_the_object_poses():
    env = make_env(EnvConfig(name="libero:libero_object/3", obs="state", chunk_len=2, max_chunks=2, num_envs=2,
                             workers=2))
    try:
        obs = env.reset([0, 1])
        assert obs["state"].shape[1] > 8 and "image" not in obs  # robot state + LIBERO's object-state
        for _ in range(2):
            obs, rewards, terminated, truncated, _ = env.chunk_step(np.zeros((2, 2, 7)))
        assert truncated.all() and rewards.shape == (2, 2)  # the time limit of 2 chunks ends both episodes
    finally:
        env.close()


def test_a_reach_run_on_a_libero_task_trains_end_to_end(tmp_path, mmpost_home):
    """The CLI a user types: RL (PPO with Flow-SDE) from scratch on libero_object/3, envs in the private
    environment; a short run (one iteration of 2 episodes) that must write its checkpoint and results."""
    import json
    import os
    import subprocess

    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "mmpost.cli", "train", "--task", "reach", "--env", "libero:libero_object/3",
                             "--output-dir", str(run), "--set", "sft.steps=0", "--set", "rl.steps=1", "--set", "env.num_envs=2",
                             "--set", "env.max_chunks=4", "--set", "data.eval_size=2", "--set", "env.video_episodes=0",
                             "--set", "threads=1"],
                            capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"}, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    assert (run / "final").is_dir() and 0.0 <= results["after"]["greedy"]["success"] <= 1.0
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in steps if m.get("stage") == "rl" and "loss/pg" in m] == [1]
