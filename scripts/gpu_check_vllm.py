"""The vLLM rollout backend on a GPU machine with vLLM installed (pip install -e '.[vllm]').

    python scripts/gpu_check_vllm.py [--dtype float32] [--skip-train]

Checks, each printed PASS or FAIL with its numbers (exit status 1 on a FAIL):
1. text prompts (the arithmetic task's tiny Qwen2-VL): vLLM's log-prob of each sampled token agrees
   with the training model's recomputed one (weights in sync at the start);
2. after a few optimiser steps that move the weights, the gap stays small with the sync and is large
   without it (the engine really receives the trained weights);
3. image prompts (chart2code's tiny Qwen2-VL): same agreement with images in the prompts;
4. ``mmpost train --task arithmetic --recipe grpo --set rollout.backend=vllm`` runs a few steps end
   to end (finite loss, the gap logged each step).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback

import torch

import mmpost
from mmpost.config import RolloutConfig
from mmpost.data.charts import chart_program
from mmpost.registry import TASKS
from mmpost.tasks.chart2code import make_row

failures = []


def report(name: str, ok: bool, detail: str) -> None:
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
    if not ok:
        failures.append(name)


def policy_for(task_name: str, dtype: str):
    task = TASKS.get(task_name)(mmpost.build_config(task_name))
    policy = task.policy(device="cuda")
    policy.set_generation_length(48)
    started = time.perf_counter()
    policy.use_vllm(RolloutConfig(backend="vllm", gpu_memory_utilization=0.25, dtype=dtype, enforce_eager=True,
                                  max_model_len=2048), seed=0)
    print(f"{task_name}: vLLM engine up in {time.perf_counter() - started:.1f} s", flush=True)
    return task, policy


def chart_image(seed: int):
    """A bar chart drawn with PIL: coloured bars of seeded heights on white."""
    import random

    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    image = Image.new("RGB", (112, 112), "white")
    draw = ImageDraw.Draw(image)
    for k in range(4):
        height = rng.randint(10, 90)
        draw.rectangle([10 + 24 * k, 100 - height, 28 + 24 * k, 100], fill=rng.choice(["red", "blue", "green"]))
    return image


def gap(rollout) -> float:
    return rollout.metrics["rollout/vllm_logprob_gap"]


def check_text(task, policy, tolerance: float) -> None:
    rows = task.rows("train")[:8]
    rollout = policy.rollout(rows, 4, temperature=1.0)
    lengths = rollout.mask.sum(1)
    ended = (~rollout.truncated).float().mean().item()
    report("text: vLLM and trainer log-probs agree", gap(rollout) < tolerance,
           f"mean |Δ log p| {gap(rollout):.2e} over {int(lengths.sum())} tokens, {ended:.0%} ended with EOS")

    # Move the weights: a few large SFT steps on demonstrations.
    optimizer = torch.optim.SGD(policy.model.parameters(), lr=0.5)
    for _ in range(3):
        loss, _ = policy.sft_loss(rows)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    synced = policy.rollout(rows, 4, temperature=1.0)
    load_weights = policy.sampler.load_weights
    policy.sampler.load_weights = lambda model: None  # a stale engine: the same rollout without the sync
    try:
        optimizer.zero_grad()
        loss, _ = policy.sft_loss(rows)
        loss.backward()
        optimizer.step()
        stale = policy.rollout(rows, 4, temperature=1.0)
    finally:
        policy.sampler.load_weights = load_weights
    report("text: weights reach vLLM after optimiser steps", gap(synced) < tolerance < gap(stale),
           f"gap with sync {gap(synced):.2e}, without {gap(stale):.2e}")
    greedy = policy.rollout(rows[:4], 1, greedy=True)
    report("text: greedy rollout", gap(greedy) < tolerance and all(isinstance(t, str) for t in greedy.outputs),
           f"gap {gap(greedy):.2e}; first output {greedy.outputs[0][:60]!r}")

def check_images(task, policy, tolerance: float) -> None:
    # chart images drawn here (the task's own rows render in its sandbox, not needed for this check)
    rows = [make_row(chart_image(i), chart_program(i)["code"], seed=i) for i in range(4)]
    rollout = policy.rollout(rows, 2, temperature=1.0)
    report("images: vLLM and trainer log-probs agree", gap(rollout) < tolerance,
           f"mean |Δ log p| {gap(rollout):.2e} over {int(rollout.mask.sum())} tokens, "
           f"{len(rows[0]['images'])} image(s) per prompt")

def check_train(dtype: str) -> None:
    run = tempfile.mkdtemp()
    command = ["mmpost", "train", "--task", "arithmetic", "--recipe", "grpo", "--output-dir", run,
               "--set", "rollout.backend=vllm", "--set", "rollout.enforce_eager=true",
               "--set", f"rollout.dtype={dtype}", "--set", "rollout.gpu_memory_utilization=0.25",
               "--set", "max_steps=4", "--set", "data.eval_size=16", "--set", "eval.sampled=false",
               "--set", "trackers=[]"]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    lines = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))] if result.returncode == 0 else []
    rl = [line for line in lines if "rollout/vllm_logprob_gap" in line]
    ok = bool(rl) and all(math.isfinite(line["loss/total"]) for line in rl)
    report("mmpost train --recipe grpo with rollout.backend=vllm", ok,
           f"{len(rl)} RL steps in {time.perf_counter() - started:.0f} s, gaps "
           f"{', '.join(format(line['rollout/vllm_logprob_gap'], '.1e') for line in rl)}" if ok else result.stderr[-3000:])


def guarded(name: str, check, *args, task: str = "", dtype: str = "") -> None:
    """Run one check (on ``task``'s policy with a vLLM engine, closed afterwards); an exception is a
    FAIL with its traceback, and the next check still runs."""
    policy = None
    try:
        if task:
            task, policy = policy_for(task, dtype)
            args = (task, policy, *args)
        check(*args)
    except Exception:
        report(name, False, traceback.format_exc()[-4000:])
    finally:
        if policy is not None:
            policy.close()
    torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="float32", help="vLLM dtype (float32 makes the agreement tight)")
    parser.add_argument("--skip-train", action="store_true", help="skip the end-to-end mmpost train check")
    args = parser.parse_args()
    tolerance = 1e-2 if args.dtype == "float32" else 0.15  # mean |Δ log p| per token
    os.environ.setdefault("MMPOST_HOME", tempfile.mkdtemp())
    print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0), flush=True)
    torch.manual_seed(0)

    guarded("text prompts", check_text, tolerance, task="arithmetic", dtype=args.dtype)
    guarded("image prompts", check_images, tolerance, task="chart2code", dtype=args.dtype)
    if not args.skip_train:
        guarded("mmpost train", check_train, args.dtype)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
