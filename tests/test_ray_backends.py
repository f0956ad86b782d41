"""The Ray backends (``env.backend=ray``, ``sandbox_backend=ray``) on a local Ray instance give
exactly what the local processes give, and a killed Ray worker is replaced with nothing lost."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")

from mmpost.envs.reach import ReachVecEnv  # noqa: E402
from mmpost.ray_backends import RayChunkEnv, RaySandbox  # noqa: E402
from mmpost.sandbox import Sandbox  # noqa: E402

PROGRAMS = ["import matplotlib.pyplot as plt\nplt.plot([1, 2, %d])\nplt.title('t%d')\n" % (i, i) for i in range(6)] + [
    "raise ValueError('model wrote a bug')", "import socket\nsocket.create_connection(('example.com', 80))"]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _kill(actor) -> None:
    os.kill(ray.get(actor.pid.remote()), signal.SIGKILL)
    time.sleep(0.5)


def test_ray_env_steps_as_the_local_env_and_replays_a_lost_worker(local_ray):
    local, remote = ReachVecEnv(4), RayChunkEnv(ReachVecEnv, 4, workers=2)
    try:
        first = local.reset([3, 5, 7, 9]), remote.reset([3, 5, 7, 9])
        np.testing.assert_array_equal(first[0]["state"], first[1]["state"])
        rng = np.random.default_rng(0)
        for chunk in range(6):
            actions = rng.normal(size=(4, local.chunk_len, local.action_dim)).astype(np.float32)
            if chunk == 4:  # the second share's worker dies mid-episode
                _kill(remote.actors[1])
            ours, theirs = local.chunk_step(actions), remote.chunk_step(actions)
            np.testing.assert_array_equal(ours[0]["state"], theirs[0]["state"])
            for i in (1, 2, 3):
                np.testing.assert_array_equal(ours[i], theirs[i])
            np.testing.assert_array_equal(ours[4]["success"], theirs[4]["success"])
        assert remote.restarts == 1
    finally:
        local.close()
        remote.close()


def test_ray_sandbox_replies_as_the_local_one_and_reruns_a_lost_workers_jobs(local_ray):
    with Sandbox("mmpost.rewards.chart_figure", workers=1) as box:
        expected = box.map(PROGRAMS)
    remote = RaySandbox("mmpost.rewards.chart_figure", workers=2)
    try:
        assert remote.network == box.network  # the same confinement inside each actor
        for attempt in range(2):
            if attempt:
                _kill(remote.actors[0])
            replies = remote.map(PROGRAMS)
            assert [r["status"] for r in replies] == [r["status"] for r in expected]
            assert [r.get("result") for r in replies] == [r.get("result") for r in expected]
        assert remote.stats == {"executed": 2 * len(PROGRAMS), "infra_retries": len(PROGRAMS[0::2])}
    finally:
        remote.close()


def test_a_run_with_ray_envs_trains_exactly_as_one_with_local_envs(mmpost_home, tmp_path):
    args = ["--task", "reach", "--set", "sft.steps=4", "--set", "rl.steps=3", "--set", "rl.batch_size=8",
            "--set", "env.num_envs=4", "--set", "env.workers=2", "--set", "data.eval_size=4",
            "--set", "eval.sampled=false", "--set", "threads=1"]
    for backend in ("local", "ray"):
        result = subprocess.run([sys.executable, "-m", "mmpost.cli", "train", *args, "--set", f"env.backend={backend}",
                                 "--output-dir", str(tmp_path / backend)], capture_output=True, text=True,
                                timeout=600, env={**os.environ, "MMPOST_HOME": mmpost_home})
        assert result.returncode == 0, result.stderr[-3000:]
    local, remote = ([json.loads(line) for line in (tmp_path / b / "metrics.jsonl").read_text().splitlines()]
                     for b in ("local", "ray"))
    assert len(local) == len(remote) == 7
    for a, b in zip(local, remote):
        for key in ("loss/sft", "loss/pg", "reward/total/mean", "env/steps"):
            assert a.get(key) == b.get(key), (a["stage"], a["step"], key)
    weights = [load_file(tmp_path / b / "final" / "model.safetensors") for b in ("local", "ray")]
    for name in weights[0]:
        torch.testing.assert_close(weights[1][name], weights[0][name], rtol=0, atol=0)
