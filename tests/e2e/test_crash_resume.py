"""kill -9 at a random point (an SFT step, RL sampling, the middle of a checkpoint write): ``--resume``
finishes with bitwise the same final parameters and metrics as an uninterrupted run (CPU, same
seed), a half-written checkpoint is never loaded, and a failed checkpoint write (disk full) stops
the run with a clear message and no corrupt checkpoint."""

import json
import os
import random
import resource
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from mmpost.checkpoint import list_checkpoints

ARGS = ["train", "--set", "data.train_size=32", "--set", "data.eval_size=4", "--set", "sft.steps=4",
        "--set", "rl.steps=3", "--set", "rl.batch_size=2", "--set", "rl.sampling.group_size=2", "--set", "rl.sampling.max_new_tokens=16",
        "--set", "threads=1", "--set", "sandbox_workers=1", "--set", "eval.sampled=false",
        "--set", "checkpoint_every=1"]
CHECKPOINTS = 4 + 3  # one per step


def _run(args, home, env=None, **kwargs):
    return subprocess.run([sys.executable, "-m", "mmpost.cli", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "MMPOST_HOME": home, **(env or {})}, **kwargs)


def _metrics(run_dir):
    timing = ("seconds", "tokens_per_s", "samples_per_s", "time/")
    return [{k: v for k, v in json.loads(line).items() if not k.startswith(timing)}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(mmpost_home, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    result = _run([*ARGS, "--output-dir", str(out)], mmpost_home)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def _kill_after_checkpoint(args, home, out, step):
    """Start a run and SIGKILL it from outside as soon as checkpoint ``step`` of SFT exists."""
    process = subprocess.Popen([sys.executable, "-m", "mmpost.cli", *args], env={**os.environ, "MMPOST_HOME": home},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "checkpoints" / f"s00-{step:06d}").exists():
        assert time.time() < deadline and process.poll() is None, "run ended before the kill point"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    return process.wait()


@pytest.mark.parametrize("point", ["sft_step", "rl_sampling", "checkpoint_write"])
def test_kill_9_then_resume_is_exact(point, uninterrupted, mmpost_home, tmp_path):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    out = tmp_path / "crashed"
    args = [*ARGS, "--output-dir", str(out)]
    if point == "sft_step":
        status = _kill_after_checkpoint(args, mmpost_home, out, rng.randint(1, 3))
    else:
        nth = rng.randint(1, 3) if point == "rl_sampling" else rng.randint(1, CHECKPOINTS)
        status = _run(args, mmpost_home, env={"MMPOST_KILL_AT": f"{point}:{nth}"}).returncode
    assert status == -signal.SIGKILL, f"not killed (seed {seed})"
    if point == "checkpoint_write":  # the half-written one is there, but not a checkpoint
        assert list((out / "checkpoints").glob(".tmp-*")), f"no partial checkpoint left (seed {seed})"
    complete = list_checkpoints(out)
    for path in complete:
        torch.load(path / "state.pt", weights_only=False)  # every listed checkpoint loads
    result = _run(["train", "--resume", str(out)], mmpost_home)
    assert result.returncode == 0, f"seed {seed}: " + result.stderr[-3000:]
    assert not list((out / "checkpoints").glob(".tmp-*"))
    full, resumed = load_file(uninterrupted / "final" / "model.safetensors"), load_file(out / "final" / "model.safetensors")
    assert all(torch.equal(full[k], resumed[k]) for k in full), f"parameters differ (seed {seed})"
    assert _metrics(uninterrupted) == _metrics(out), f"metrics differ (seed {seed})"


def test_failed_checkpoint_write_stops_clearly(uninterrupted, mmpost_home, tmp_path):
    """A disk that fills up mid-run (here: a file-size limit below one checkpoint's size) stops the run
    with a message naming the checkpoint, and leaves no partial checkpoint behind."""
    out = tmp_path / "full-disk"
    size = (uninterrupted / "final" / "model.safetensors").stat().st_size  # a checkpoint is larger (optimizer)

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    result = _run([*ARGS, "--output-dir", str(out)], mmpost_home, preexec_fn=limit)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "could not write checkpoint" in result.stderr and "File too large" in result.stderr
    assert list_checkpoints(out) == [] and not list((out / "checkpoints").glob(".tmp-*"))
