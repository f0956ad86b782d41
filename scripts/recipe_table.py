"""Which methods help on which task: every named recipe at its default length, one table.

    python scripts/recipe_table.py --task arithmetic --root runs/recipes            # all recipes
    python scripts/recipe_table.py --task arithmetic --recipes grpo dpo rft --jobs 2 --set threads=1
    python scripts/recipe_table.py --task arithmetic --no-run                       # report only

Not part of the test suite (it trains for tens of minutes). Methods that post-train an SFT model
(RL, preference, rejection sampling, mixed) all start from the *same* SFT run of the task's default
recipe (``ROOT/sft-seedS/final``), with their own SFT stage skipped, so their before/after columns
compare methods on one starting point. Methods that replace SFT itself (DFT, Anchored SFT, ssToken,
PoFT, DMT, DONOD, Middo) train from the untrained model for the default SFT budget and are compared
with plain SFT.
Each run is ``mmpost train`` in ``ROOT/RECIPE-seedS`` (resumed if interrupted); the held-out metric
is the engine's own greedy and sampled evaluation.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from seed_table import run  # noqa: E402  (same runner, resumable)


def main() -> None:
    import mmpost
    from mmpost.recipes import RECIPES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="arithmetic")
    parser.add_argument("--recipes", nargs="*", default=list(RECIPES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", default="runs/recipes")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE passed to every run")
    parser.add_argument("--no-run", action="store_true")
    args = parser.parse_args()
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    extra = [item for kv in args.set for item in ("--set", kv)]
    metric = mmpost.TASKS.get(args.task).metric
    base = root / f"sft-seed{args.seed}"
    if not args.no_run:
        run(args.task, "sft", args.seed, base, extra)

    def replaces_sft(name: str) -> bool:
        """Methods that are a kind of SFT (or reshape the SFT data, as DMT) train from the untrained model."""
        stages = [s.name for s in mmpost.build_config(args.task, recipe=name).stages]
        return RECIPES[name].keep == ("sft",) or "sft" not in stages

    def job(name: str) -> None:
        post = [] if replaces_sft(name) else ["--model", str(base / "final"), "--set", "sft.steps=0"]
        run(args.task, name, args.seed, root / f"{name}-seed{args.seed}", [*post, *extra])

    names = [n for n in args.recipes if n != "sft"]
    if not args.no_run:
        with ThreadPoolExecutor(args.jobs) as pool:
            for future in [pool.submit(job, n) for n in names]:
                try:
                    future.result()
                except Exception as error:  # one failed method must not hide the others' results
                    print(f"run failed: {error}", file=sys.stderr)

    print(f"{args.task}: held-out {metric}, greedy and sampled (T=1); seed {args.seed}")
    print(f"| recipe | starts from | stages | greedy before → after | sampled before → after | minutes |")
    print("|---|---|---|---|---|---|")
    for name in ["sft", *names]:
        run_dir = base if name == "sft" else root / f"{name}-seed{args.seed}"
        path = run_dir / "results.json"
        if not path.exists() or "after" not in json.loads(path.read_text()):
            print(f"| `{name}` | | | (no result) | | |")
            continue
        results = json.loads(path.read_text())
        cells = []
        for mode in ("greedy", "sampled"):
            before, after = results["before"].get(mode, {}), results["after"].get(mode, {})
            cells.append(f"{before.get(metric, float('nan')):.3f} → {after.get(metric, float('nan')):.3f}")
        stages = json.loads(json.dumps(__import__("yaml").safe_load((run_dir / "config.yaml").read_text())["stages"]))
        kinds = "+".join(f"{s['kind']}" for s in stages if s["steps"] > 0)
        start = "untrained" if name == "sft" or replaces_sft(name) else "SFT"
        seconds = run_dir.with_suffix(".seconds")
        minutes = f"{float(seconds.read_text()) / 60:.1f}" if seconds.exists() else "-"
        print(f"| `{name}` | {start} | {kinds} | {cells[0]} | {cells[1]} | {minutes} |")


if __name__ == "__main__":
    main()
