"""End-to-end: the CLI and the Python API on a few steps of the real pipeline."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

QUICK = ["--set", "data.train_size=32", "--set", "data.eval_size=4", "--set", "sft.steps=4",
         "--set", "rl.steps=3", "--set", "rl.batch_size=2", "--set", "rl.sampling.group_size=2",
         "--set", "rl.sampling.max_new_tokens=16", "--set", "threads=1", "--set", "sandbox_workers=1",
         "--set", "eval.sampled=false"]


def run_cli(args, home, timeout=300, **kwargs):
    env = {**os.environ, "MMPOST_HOME": home}
    return subprocess.run([sys.executable, "-m", "mmpost.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def test_train_writes_run_directory(mmpost_home, tmp_path):
    out = tmp_path / "run"
    result = run_cli(["train", "--task", "chart2code", *QUICK, "--output-dir", str(out)], mmpost_home)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "held-out evaluation" in result.stdout
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in lines] == [("sft", i) for i in range(1, 5)] + [("rl", i) for i in range(1, 4)]
    rl = lines[-1]
    for key in ("loss/pg", "reward/chart_render/mean", "reward/chart_render/color/mean", "entropy",
                "clip_frac", "tokens_per_s", "seconds"):
        assert key in rl, key
    results = json.loads((out / "results.json").read_text())
    assert {"before", "after_sft", "after"} <= set(results)
    assert (out / "config.yaml").exists() and (out / "samples" / "after" / "samples.jsonl").exists()
    assert (out / "samples" / "before" / "000_input0.png").exists()
    from transformers import AutoModelForImageTextToText, AutoProcessor

    AutoProcessor.from_pretrained(out / "final")
    AutoModelForImageTextToText.from_pretrained(out / "final")


def test_clear_errors(mmpost_home):
    result = run_cli(["train", "--task", "chart2cod"], mmpost_home)
    assert result.returncode == 2 and "Did you mean 'chart2code'" in result.stderr
    result = run_cli(["train", "--set", "rl.grop_size=2"], mmpost_home)
    assert result.returncode == 2 and "Did you mean 'sampling.group_size'" in result.stderr
    result = run_cli(["train", "--rewards", "nope"], mmpost_home)
    assert result.returncode == 2 and "unknown reward 'nope'" in result.stderr


@pytest.mark.slow
def test_user_reward_file_changes_output_length(mmpost_home, tmp_path):
    """RL on a length reward from a file outside the package lengthens outputs; its negation shortens them."""
    reward_file = tmp_path / "my_rewards.py"
    reward_file.write_text(
        "def longer(prompts, completions, **kw):\n    return [len(c) / 100 for c in completions]\n"
        "def shorter(prompts, completions, **kw):\n    return [-len(c) / 100 for c in completions]\n")
    lengths = {}
    for name in ("longer", "shorter"):
        out = tmp_path / name
        result = run_cli(["train", *QUICK, "--set", "sft.steps=0", "--set", "rl.steps=25", "--set", "rl.optim.lr=3e-3",
                          "--set", "rl.sampling.group_size=4", "--set", "rl.sampling.max_new_tokens=24",
                          "--reward", f"{reward_file}:{name}", "--rewards", name, "--output-dir", str(out)],
                         mmpost_home, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        lengths[name] = sum(r[f"reward/{name}/mean"] for r in rows[-5:]) / 5
    print(f"\nmean completion length, last 5 RL steps: longer {100 * lengths['longer']:.1f} chars, "
          f"shorter {-100 * lengths['shorter']:.1f} chars")
    assert lengths["longer"] > -lengths["shorter"] + 0.05  # mean characters/100 of the last steps


def test_ctrl_c_saves_checkpoint_and_resume_finishes(mmpost_home, tmp_path):
    out = tmp_path / "interrupted"
    env = {**os.environ, "MMPOST_HOME": mmpost_home}
    process = subprocess.Popen([sys.executable, "-m", "mmpost.cli", "train", *QUICK, "--set", "sft.steps=200",
                                "--set", "checkpoint_every=1000", "--output-dir", str(out)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 240
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        assert time.time() < deadline and process.poll() is None
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, _ = process.communicate(timeout=120)
    assert process.returncode == 130 and "--resume" in stdout
    saved = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert len(saved) == 1 and saved[0].startswith("s00-")
    result = run_cli(["train", "--resume", str(out)], mmpost_home)
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if '"sft"' in line]
    assert steps == list(range(1, 201))


@pytest.mark.parametrize("task, metric", [("grounding", "grounding_iou"), ("audio_qa", "choice_accuracy"),
                                          ("video_qa", "choice_accuracy")])
def test_modality_tasks_run_end_to_end(task, metric, mmpost_home, tmp_path):
    """A few steps of each modality task's default recipe: both stages train, the held-out metric
    and the input-blind baseline are reported, and the final model reloads with from_pretrained."""
    out = tmp_path / task
    quick = [a if a != "rl.sampling.max_new_tokens=16" else "rl.sampling.max_new_tokens=8" for a in QUICK]
    result = run_cli(["train", "--task", task, *quick, "--output-dir", str(out)], mmpost_home, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "input-blind baseline" in result.stdout
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in lines] == ["sft"] * 4 + ["rl"] * 3
    assert all(torch.isfinite(torch.tensor(r.get("loss/sft", r.get("loss/pg", 0.0)))) for r in lines)
    results = json.loads((out / "results.json").read_text())
    assert 0.0 <= results["blind"]["score"] <= 1.0 and metric in results["after"]["greedy"]
    from mmpost.adapters.token_policy import TokenPolicy

    TokenPolicy.from_pretrained(out / "final")
