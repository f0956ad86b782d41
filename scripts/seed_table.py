"""Reproduce a task's acceptance table: recipes over several seeds, evaluated on the held-out split
untrained, after SFT and after RL (the engine's own before/after evaluation).

    python scripts/seed_table.py --task reach --recipes flow_sde_ppo flow_noise_ppo --metrics success
    python scripts/seed_table.py --task multiview3d --recipes ddpo --metrics mrc object_match
    python scripts/seed_table.py ... --no-run                      # report runs already in --root
    python scripts/seed_table.py ... --jobs 2 --set threads=1      # two runs at a time

Each run is ``mmpost train --task T --recipe R --seed S`` in ``ROOT/R-seedS`` (resumed if it was
interrupted). Printed: each metric's mean ± std over seeds, the RL − SFT gain per seed paired on
the same held-out rows with its standard error over rows, the KL of the RL model to the SFT
model (held-out, when the recipe has a reference) and each run's wall time.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def run(task: str, recipe: str, seed: int, run_dir: Path, extra: list[str]) -> None:
    """One resumable run (:func:`mmpost.tools.study.train_once`)."""
    from mmpost.tools.study import train_once

    train_once(task, recipe, seed, run_dir, {}, extra)


def mean_std(values: list[float]) -> str:
    return f"{values[0]:.3f}" if len(values) == 1 else f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True)
    parser.add_argument("--recipes", nargs="+", required=True)
    parser.add_argument("--metrics", nargs="+", required=True, help="held-out metrics to tabulate")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", default="", help="default: runs/TASK-table")
    parser.add_argument("--no-run", action="store_true")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    root = Path(args.root or f"runs/{args.task}-table")
    root.mkdir(parents=True, exist_ok=True)
    extra = [item for kv in args.set for item in ("--set", kv)]
    runs = {(recipe, seed): root / f"{recipe}-seed{seed}" for recipe in args.recipes for seed in args.seeds}
    if not args.no_run:
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda item: run(args.task, item[0][0], item[0][1], item[1], extra), runs.items()))
    results = {key: json.loads((path / "results.json").read_text()) for key, path in runs.items()}
    modes = [m for m in ("greedy", "sampled") if m in next(iter(results.values()))["after"]]

    print(f"{args.task}: held-out metrics over seeds {args.seeds} (mean ± std)")
    print(f"{'recipe':<16}{'metric':<24}{'untrained':>16}{'after SFT':>16}{'after RL':>16}{'RL - SFT':>16}")
    for recipe in args.recipes:
        for metric in args.metrics:
            for mode in modes:
                cells = [[results[recipe, s][key][mode][metric] for s in args.seeds]
                         for key in ("before", "after_sft", "after")]
                gain = [a - b for a, b in zip(cells[2], cells[1])]
                print(f"{recipe:<16}{mode + ' ' + metric:<24}" + "".join(f"{mean_std(c):>16}" for c in cells)
                      + f"{mean_std(gain):>16}")
    blind = [r["blind"]["score"] for r in results.values() if r.get("blind")]
    if blind:  # the task's input-blind answer (e.g. the mean training box), the same for every seed
        print(f"input-blind baseline, {next(r['blind']['what'] for r in results.values() if r.get('blind'))}: "
              f"{mean_std(blind[:1])}")
    print(f"\npaired RL - SFT on the same held-out rows, {args.metrics[0]} (mean, standard error over rows); "
          "KL of the RL model to the SFT model; wall time")
    for (recipe, seed), r in results.items():
        parts = []
        for mode in modes:
            diffs = [a - b for a, b in zip(r["after"]["per_sample"][mode], r["after_sft"]["per_sample"][mode])]
            parts.append(f"{mode} {statistics.mean(diffs):+.4f} (se {statistics.stdev(diffs) / math.sqrt(len(diffs)):.4f})")
        kl = r.get("kl_to_start", {}).get("rl")
        if kl:
            parts.append(f"KL k1 {kl['k1']:.2e} k3 {kl['k3']:.2e}")
        seconds = runs[recipe, seed].with_suffix(".seconds")
        if seconds.exists():
            parts.append(f"{float(seconds.read_text()) / 60:.1f} min")
        print(f"{recipe} seed {seed}: " + ", ".join(parts))


if __name__ == "__main__":
    main()
