"""``mmpost bench-env``: simulator throughput and the cost split of an RL iteration.

1. Env throughput: control steps/s of the reach scene stepping random action chunks, for each
   observation mode (state; 64x64 camera images) and each number of worker processes.
2. RL iterations: a few real PPO iterations of the reach recipe through the trainer (no
   shortcuts), reporting seconds per iteration split into simulate / infer / update (from the
   run's ``metrics.jsonl``), for state observations with the MLP encoder and for camera images
   with a timm encoder.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np


def env_throughput(num_envs: int, obs: str, workers: int, seconds: float = 3.0) -> float:
    """Control steps per second stepping random chunks in ``num_envs`` reach envs."""
    from mmpost.config import EnvConfig
    from mmpost.envs.base import make_env

    env = make_env(EnvConfig(obs=obs, num_envs=num_envs, workers=workers, max_chunks=10_000))
    rng = np.random.default_rng(0)
    try:
        env.reset(list(range(num_envs)))
        env.chunk_step(rng.uniform(-1, 1, (num_envs, env.chunk_len, env.action_dim)))  # warm-up (renderer)
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            env.chunk_step(rng.uniform(-1, 1, (num_envs, env.chunk_len, env.action_dim)))
            steps += num_envs * env.chunk_len
        return steps / (time.perf_counter() - start)
    finally:
        env.close()


def median_iteration_metrics(task: str, overrides: dict, keys: tuple[str, ...]) -> dict:
    """Medians of ``keys`` over the RL iterations of a short real run of the trainer (the first
    iteration, which pays one-off warm-up costs, is left out when there are more)."""
    import mmpost
    from mmpost.engine import train

    with tempfile.TemporaryDirectory() as tmp:
        train(mmpost.build_config(task, output_dir=str(Path(tmp) / "run"), overrides=overrides))
        records = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    records = records[1:] or records
    return {k: float(np.median([r[k] for r in records])) for k in keys}


def rl_iterations(iterations: int, num_envs: int, overrides: dict) -> dict:
    """Median seconds per reach RL iteration and its split."""
    return median_iteration_metrics("reach", {
        "sft.steps": 0, "rl.steps": iterations, "rl.batch_size": num_envs, "env.num_envs": num_envs,
        "data.eval_size": 8, "eval.sampled": False, "env.video_episodes": 0, **overrides},
        ("seconds", "time/simulate", "time/infer", "time/update", "env/steps"))


def run(num_envs: int = 64, workers: tuple[int, ...] = (1, 2), iterations: int = 6, quick: bool = False) -> dict:
    """Print and return the benchmark table."""
    seconds = 1.0 if quick else 3.0
    results = {"env": [], "rl": []}
    print(f"env throughput: reach scene, {num_envs} envs, random chunks of 4 control steps")
    print(f"{'obs':<8}{'workers':>8}{'steps/s':>12}")
    for obs in ("state", "image"):
        for w in workers:
            rate = env_throughput(num_envs, obs, w, seconds)
            results["env"].append({"obs": obs, "workers": w, "steps_per_s": rate})
            print(f"{obs:<8}{w:>8}{rate:>12.0f}")
    cases = {"state + mlp": {}, "image + timm:resnet10t": {"env.obs": "image"}}
    print(f"\nRL iteration (PPO, {num_envs} episodes of up to 8 chunks): median seconds")
    print(f"{'case':<24}{'total':>8}{'simulate':>10}{'infer':>8}{'update':>8}{'env steps/s':>13}")
    for name, overrides in cases.items():
        r = rl_iterations(2 if quick else iterations, num_envs, overrides)
        results["rl"].append({"case": name, **r})
        print(f"{name:<24}{r['seconds']:>8.2f}{r['time/simulate']:>10.2f}{r['time/infer']:>8.2f}"
              f"{r['time/update']:>8.2f}{r['env/steps'] / r['seconds']:>13.0f}")
    return results
