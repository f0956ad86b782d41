"""Reproduce the reach acceptance table: the default recipe with Flow-SDE and with Flow-Noise, over
several seeds, on the held-out initial states and instructions.

    python scripts/reach_table.py --seeds 0 1 2 --root runs/reach-table           # runs missing ones, reports
    python scripts/reach_table.py --seeds 0 1 2 --root runs/reach-table --no-run  # report existing runs
    python scripts/reach_table.py --seeds 0 1 2 --jobs 2 --set threads=1          # two runs at a time

Each run is ``mmpost train --task reach --recipe {flow_sde_ppo|flow_noise_ppo} --seed S``: few-shot
SFT on scripted demonstrations, then PPO in the MuJoCo scene. The engine evaluates the same
held-out episodes untrained, after SFT and after RL, with the ODE sampler (greedy) and the
stochastic one (sampled). The script prints success mean ± std over seeds, and the paired RL − SFT
difference per seed with its standard error over episodes.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

METHODS = {"Flow-SDE": "flow_sde_ppo", "Flow-Noise": "flow_noise_ppo"}


def run(recipe: str, seed: int, run_dir: Path, extra: list[str]) -> None:
    if (run_dir / "results.json").exists() and "after" in json.loads((run_dir / "results.json").read_text()):
        return
    command = [sys.executable, "-m", "mmpost.cli", "train", "--task", "reach", "--recipe", recipe,
               "--seed", str(seed), *extra]
    command += ["--resume", str(run_dir)] if (run_dir / "config.yaml").exists() else ["--output-dir", str(run_dir)]
    with open(run_dir.with_suffix(".log"), "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)


def mean_std(values: list[float]) -> str:
    return f"{values[0]:.3f}" if len(values) == 1 else f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", default="runs/reach-table")
    parser.add_argument("--no-run", action="store_true")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    extra = [item for kv in args.set for item in ("--set", kv)]
    runs = {(name, seed): root / f"{recipe}-seed{seed}" for name, recipe in METHODS.items() for seed in args.seeds}
    if not args.no_run:
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda item: run(METHODS[item[0][0]], item[0][1], item[1], extra), runs.items()))

    print(f"held-out success over seeds {args.seeds} (mean ± std)")
    print(f"{'method':<12}{'decoding':<10}{'untrained':>16}{'after SFT':>16}{'after RL':>16}{'RL - SFT':>16}")
    for name in METHODS:
        results = [json.loads((runs[name, s] / "results.json").read_text()) for s in args.seeds]
        for mode in ("greedy", "sampled"):
            cells = [[r[key][mode]["success"] for r in results] for key in ("before", "after_sft", "after")]
            gain = [a - b for a, b in zip(cells[2], cells[1])]
            print(f"{name:<12}{mode:<10}" + "".join(f"{mean_std(c):>16}" for c in cells) + f"{mean_std(gain):>16}")
    print("\npaired RL - SFT on the same held-out episodes (mean, standard error over episodes)")
    for name in METHODS:
        for seed in args.seeds:
            r = json.loads((runs[name, seed] / "results.json").read_text())
            parts = []
            for mode in ("greedy", "sampled"):
                diffs = [a - b for a, b in zip(r["after"]["per_sample"][mode], r["after_sft"]["per_sample"][mode])]
                parts.append(f"{mode} {statistics.mean(diffs):+.3f} (se {statistics.stdev(diffs) / math.sqrt(len(diffs)):.3f})")
            print(f"{name} seed {seed}: " + ", ".join(parts))


if __name__ == "__main__":
    main()
