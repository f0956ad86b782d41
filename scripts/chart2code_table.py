"""Reproduce the chart2code acceptance table: default runs over several seeds, on the held-out split.

    python scripts/chart2code_table.py --seeds 0 1 2 --root runs/table          # runs missing seeds, then reports
    python scripts/chart2code_table.py --seeds 0 1 2 --root runs/table --no-run # report existing runs only

Each seed is one default ``mmpost train --task chart2code --seed S`` (SFT then GRPO). The engine
evaluates the same 100 held-out charts before training, after SFT and after GRPO, greedy and
sampled (T=1). This script prints mean ± std over seeds of every reward component, the paired
GRPO − SFT difference per seed (with its standard error over charts), and two image-blind
baselines: a random training program, and a random training program of the right chart type.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import subprocess
import sys
from pathlib import Path

COMPONENTS = ["chart_render", "chart_render/exec", "chart_render/type", "chart_render/color",
              "chart_render/data", "chart_render/text", "chart_render/layout", "chart_render/ssim"]


def run_seed(seed: int, run_dir: Path, extra: list[str]) -> None:
    if (run_dir / "results.json").exists() and "after" in json.loads((run_dir / "results.json").read_text()):
        return
    command = [sys.executable, "-m", "mmpost.cli", "train", "--task", "chart2code", "--seed", str(seed), *extra]
    command += ["--resume", str(run_dir)] if (run_dir / "config.yaml").exists() else ["--output-dir", str(run_dir)]
    subprocess.run(command, check=True)


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def paired(after: list, before: list) -> tuple[float, float]:
    """Mean and standard error of per-chart differences (charts scored in both runs)."""
    diffs = [a - b for a, b in zip(after, before) if a is not None and b is not None]
    return statistics.mean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs))


def blind_baselines(eval_size: int, train_size: int, draws: int = 3) -> dict[str, dict[str, float]]:
    """Image-blind programs scored against each held-out chart with the real reward."""
    from mmpost.data.charts import chart_program, split_seeds
    from mmpost.rewards.chart_render import ChartRender

    reward = ChartRender(workers=2)
    heldout = [chart_program(s) for s in split_seeds("heldout", eval_size)]
    train = [chart_program(s) for s in split_seeds("train", train_size)]
    by_type: dict[str, list[dict]] = {}
    for program in train:
        by_type.setdefault(program["chart_type"], []).append(program)
    rng = random.Random(0)
    out = {}
    for name, pick in (("random training program", lambda gold: rng.choice(train)),
                       ("right type, rest blind", lambda gold: rng.choice(by_type[gold["chart_type"]]))):
        totals: dict[str, list[float]] = {}
        for _ in range(draws):
            guesses = [pick(gold)["code"] for gold in heldout]
            scores = reward(["p"] * len(heldout), [f"```python\n{g}```" for g in guesses],
                            code=[g["code"] for g in heldout])
            parts = {"chart_render": list(scores), **{f"chart_render/{k}": v for k, v in scores.components.items()}}
            for key, values in parts.items():
                totals.setdefault(key, []).append(statistics.mean(v for v in values if v is not None))
        out[name] = {k: statistics.mean(v) for k, v in totals.items()}
    reward.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", type=Path, default=Path("runs/chart2code-table"))
    parser.add_argument("--no-run", action="store_true", help="only report runs that exist")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="extra `mmpost train` arguments")
    args = parser.parse_args()

    results = {}
    for seed in args.seeds:
        run_dir = args.root / f"seed{seed}"
        if not args.no_run:
            run_seed(seed, run_dir, args.extra)
        results[seed] = json.loads((run_dir / "results.json").read_text())
    stages = [("untrained", "before"), ("SFT", "after_sft"), ("SFT+GRPO", "after")]
    lines = ["| stage | decoding | " + " | ".join(c.split("/")[-1] if "/" in c else "reward" for c in COMPONENTS) + " |",
             "|---|---|" + "---|" * len(COMPONENTS)]
    for label, key in stages:
        for mode in ("greedy", "sampled"):
            cells = []
            for component in COMPONENTS:
                values = [r[key][mode][component] for r in results.values() if r.get(key, {}).get(mode, {}).get(component) is not None]
                cells.append(mean_std(values) if values else "-")
            lines.append(f"| {label} | {mode} | " + " | ".join(cells) + " |")
    import yaml

    first = args.root / f"seed{args.seeds[0]}"
    n_eval = len(results[args.seeds[0]]["after"]["per_sample"]["greedy"])
    train_size = yaml.safe_load((first / "config.yaml").read_text())["data"]["train_size"]
    for name, scores in blind_baselines(n_eval, train_size).items():
        lines.append(f"| blind: {name} | - | " + " | ".join(f"{scores.get(c, float('nan')):.3f}" for c in COMPONENTS) + " |")
    print(f"\nchart2code held-out ({n_eval} charts), seeds {args.seeds}, mean ± std over seeds\n")
    print("\n".join(lines))
    print("\npaired GRPO − SFT on the same charts (mean difference, standard error over charts)")
    report = {"table": lines, "paired": {}}
    for seed, r in results.items():
        row = {}
        for mode in ("greedy", "sampled"):
            diff, se = paired(r["after"]["per_sample"][mode], r["after_sft"]["per_sample"][mode])
            row[mode] = {"diff": diff, "se": se}
        report["paired"][seed] = row
        print(f"seed {seed}: greedy {row['greedy']['diff']:+.3f} (se {row['greedy']['se']:.3f}), "
              f"sampled {row['sampled']['diff']:+.3f} (se {row['sampled']['se']:.3f})")
    (args.root / "table.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
