"""Two data-parallel CPU processes (``accelerate launch --multi_gpu --num_processes 2``, gloo) give the
same losses and final parameters as one process with the same global batch, for SFT then GRPO.

On CPU, accelerate 1.15 starts torchrun only with ``--multi_gpu``; ``--cpu --num_processes 2``
alone starts a single process unless MPI is configured, so the test uses the former."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

REWARD = "def longer(prompts, completions, **kw):\n    return [len(c) / 10 for c in completions]\n"
ARGS = ["train", "--task", "arithmetic", "--set", "data.train_size=32", "--set", "data.eval_size=4",
        "--set", "sft.steps=3", "--set", "sft.batch_size=4", "--set", "rl.steps=2", "--set", "rl.batch_size=4",
        "--set", "rl.sampling.group_size=4", "--set", "rl.sampling.max_new_tokens=12", "--set", "rl.optim.lr=1e-3",
        "--set", "rl.sampling.generation_batch=2", "--set", "threads=1", "--set", "eval.sampled=false"]


def _run(launcher, out, home, reward_file):
    cmd = [*launcher, "-m", "mmpost.cli", *ARGS, "--reward", f"{reward_file}:longer", "--rewards", "longer",
           "--output-dir", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "MMPOST_HOME": home, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="accelerate's launcher is not on PATH")
def test_two_processes_match_one(mmpost_home, tmp_path):
    reward_file = tmp_path / "rewards.py"
    reward_file.write_text(REWARD)
    one = _run([sys.executable], tmp_path / "one", mmpost_home, reward_file)
    two = _run(["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", "0"],
               tmp_path / "two", mmpost_home, reward_file)
    assert [(m["stage"], m["step"]) for m in one] == [(m["stage"], m["step"]) for m in two]
    for a, b in zip(one, two):
        assert a["tokens"] == b["tokens"], (a["stage"], a["step"])  # the same samples, split over two processes
        for key in ("loss/sft", "loss/pg", "reward/total/mean", "grad_norm"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (a["stage"], a["step"], key)
    assert any(abs(m.get("loss/pg", 0.0)) > 1e-4 for m in one), "GRPO had nothing to learn: a vacuous check"
    final_one = load_file(tmp_path / "one" / "final" / "model.safetensors")
    final_two = load_file(tmp_path / "two" / "final" / "model.safetensors")
    for name in final_one:
        torch.testing.assert_close(final_two[name], final_one[name], rtol=0, atol=1e-4, msg=name)
