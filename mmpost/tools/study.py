"""``mmpost study``: SFT vs RL and their blends on one task, same start, same budget, several seeds.

Arms (token tasks): ``sft`` (the task's SFT stage for as many optimiser steps as SFT + RL take in the
other arms), ``sft_answer_only`` (the same on demonstrations without their reasoning, where the task's
demonstrations reason: "Debunk the Myth of SFT Generalization"), ``sft_rl`` (the task's default recipe: SFT then its RL stage), and the blends ``chord``,
``luffy`` and ``relift`` (the library's recipes: SFT, then their mixed RL stage). The budget is equal
optimiser steps from the same untrained start model; each arm's wall time and training samples
(demonstrations + sampled completions) are logged beside it, since the blends and RL spend more
per step. Every arm is evaluated greedily on the held-out split (in distribution) and, where the task
declares one, on its out-of-distribution split (``ood``); the ``sft`` arm's model is also measured for
the headroom RL can sharpen (:mod:`mmpost.tools.headroom`). The report gives, per arm, the mean and
standard deviation over seeds and the paired difference to ``sft`` with its standard error
(``std(d) / sqrt(n)`` over seeds), as a table, ``study.json``, a bar chart ``study.png`` and the
learning curves ``study_curves.png`` (each run evaluates greedily, ID and OOD, at ~8 equal budgets:
``eval.every``).

Each run is ``mmpost train`` in ``ROOT/ARM-seedS`` and is skipped when it already finished (a study
resumes where it stopped). ``--quick`` shrinks every run to a few steps for the test suite.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ARMS = {"sft": None, "sft_answer_only": None, "sft_rl": None, "chord": "chord", "luffy": "luffy", "relift": "relift"}
CURVE_POINTS = 8
QUICK = {"data.train_size": 64, "data.eval_size": 8, "eval.sampled": "false", "eval.samples_to_save": 0}


def arm_overrides(task_cls, arm: str, quick: bool) -> tuple[str | None, dict]:
    """The recipe and ``--set`` overrides of ``arm``: equal optimiser steps across arms."""
    default = task_cls.default_config()
    sft, rl = default.stages[0], default.stages[-1]
    sft_steps, rl_steps = (6, 3) if quick else (sft.steps, rl.steps)
    updates = rl.updates_per_step()
    if arm in ("sft", "sft_answer_only"):  # the same optimiser steps as SFT + RL (an RL step may hold several)
        sets = {f"{sft.name}.steps": sft_steps + rl_steps * updates}
        return "sft", {**sets, f"{sft.name}.rows.answer_only": True} if arm == "sft_answer_only" else sets
    rl_name = {"chord": "mixed"}.get(arm, rl.name)  # the name the recipe gives the RL stage
    return ARMS[arm], {f"{sft.name}.steps": sft_steps, f"{rl_name}.steps": rl_steps}


def optimiser_steps(task: str, recipe: str | None, sets: dict) -> int:
    """Optimiser updates the arm's stages take (an RL step holds ``epochs x minibatches`` of them)."""
    import mmpost

    return sum(s.steps * s.updates_per_step() for s in mmpost.build_config(task, recipe=recipe, overrides=sets).stages)


def train_once(task: str, recipe: str | None, seed: int, run_dir: Path, sets: dict, extra: list[str]) -> None:
    """``mmpost train`` into ``run_dir`` unless it finished there (then nothing; if it stopped, resumed);
    its output to ``RUN_DIR.log`` and its wall time to ``RUN_DIR.seconds``."""
    results = run_dir / "results.json"
    if results.exists() and "after" in json.loads(results.read_text()):
        return
    command = [sys.executable, "-m", "mmpost.cli", "train", "--task", task, "--seed", str(seed),
               *(["--recipe", recipe] if recipe else []),
               *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")], *extra]
    command += ["--resume", str(run_dir)] if (run_dir / "config.yaml").exists() else ["--output-dir", str(run_dir)]
    start = time.perf_counter()
    log_path = run_dir.with_suffix(".log")
    with open(log_path, "w") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
    if code:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        raise RuntimeError(f"run {run_dir} failed (exit {code}): {tail[0][:300]} (whole log: {log_path}); "
                           "the same command again resumes it and skips the finished runs")
    run_dir.with_suffix(".seconds").write_text(f"{time.perf_counter() - start:.1f}\n")


def _ood(task: str, run_dir: Path, extra: list[str]) -> float | None:
    """The final model's greedy metric on the task's OOD split (cached in ``ood.json``)."""
    cache = run_dir / "ood.json"
    if not cache.exists():
        command = [sys.executable, "-m", "mmpost.cli", "eval", "--task", task, "--model", str(run_dir / "final"),
                   "--split", "ood", "--set", "eval.sampled=false", "--out", str(run_dir / "ood"), *extra]
        subprocess.run(command, check=True, capture_output=True, text=True)
        cache.write_text((run_dir / "ood" / "results.json").read_text())
    return json.loads(cache.read_text())["greedy"]


def _curve(run_dir: Path, metric: str) -> dict:
    """The run's learning curve from ``metrics.jsonl``: optimiser updates and the greedy metric, ID and OOD
    (empty for a run trained without ``eval.every``)."""
    points = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"updates"' in line]
    return {"updates": [p["updates"] for p in points], "id": [p.get(f"eval/heldout/{metric}") for p in points],
            "ood": [p.get(f"eval/ood/{metric}") for p in points]}


def _samples(run_dir: Path) -> int:
    """Training samples the run's stages draw: demonstrations, or prompts x group size for RL kinds."""
    import yaml

    stages = yaml.safe_load((run_dir / "config.yaml").read_text())["stages"]
    return sum(s["steps"] * s["batch_size"] * (s["sampling"]["group_size"] if s["kind"] in ("rl", "mixed") else 1)
               for s in stages)


def _headroom(task: str, run_dir: Path, extra: list[str], quick: bool) -> dict:
    """The SFT model's pass@k vs pass@1 on training prompts (cached in ``headroom.json``)."""
    cache = run_dir / "headroom.json"
    if not cache.exists():
        size = ["--prompts", "8", "--samples", "4"] if quick else ["--prompts", "64", "--samples", "8"]
        command = [sys.executable, "-m", "mmpost.cli", "headroom", "--task", task, "--model", str(run_dir / "final"),
                   *size, "--json", str(cache), *extra]
        subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(cache.read_text())


def paired(values: dict[int, float], base: dict[int, float]) -> dict:
    """Mean paired difference to ``base`` over the seeds both have, and its standard error.

    >>> paired({0: 0.5, 1: 0.7}, {0: 0.4, 1: 0.4})
    {'diff': 0.2, 'se': 0.1, 'seeds': 2}
    """
    diffs = [values[s] - base[s] for s in sorted(values) if s in base]
    if not diffs:
        return {"diff": None, "se": None, "seeds": 0}
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else None
    return {"diff": round(statistics.fmean(diffs), 6), "se": None if se is None else round(se, 6), "seeds": len(diffs)}


def study(task: str, seeds: list[int], arms: list[str] | None = None, root: str = "", jobs: int = 1,
          quick: bool = False, sets: dict | None = None) -> dict:
    """Train every arm on every seed (resumable), evaluate ID and OOD, write ``ROOT/study.json``."""
    import mmpost
    from mmpost.types import task_member

    task_cls = mmpost.TASKS.get(task)
    reasoning = task_member(task_cls, "answer_only") is not None  # demonstrations with reasoning to take away
    token = task_member(task_cls, "policy_kind") == "token"
    arms = arms or [a for a in ARMS if (a != "sft_answer_only" or reasoning) and (token or a in ("sft", "sft_rl"))]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise ValueError(f"unknown study arm(s) {unknown}; expected some of {', '.join(ARMS)}")
    if not token and set(arms) - {"sft", "sft_rl"}:
        raise ValueError(f"task {task!r} trains a {task_member(task_cls, 'policy_kind')} policy: the blends need a "
                         "token policy; use --arms sft,sft_rl")
    root_dir = Path(root or f"runs/study-{task}")
    root_dir.mkdir(parents=True, exist_ok=True)
    extra = [a for k, v in {**(QUICK if quick else {}), **(sets or {})}.items() for a in ("--set", f"{k}={v}")]
    metric, has_ood = task_cls.metric, bool(task_member(task_cls, "ood"))

    def job(arm: str, seed: int) -> dict:
        recipe, arm_sets = arm_overrides(task_cls, arm, quick)
        steps = optimiser_steps(task, recipe, arm_sets)
        # a learning curve: ~8 greedy evaluations of each run, ID and OOD, at the same budgets in every arm
        curve = {"eval.every": max(1, steps // CURVE_POINTS),
                 "eval.curve": "[heldout,ood]" if has_ood else "[heldout]"}
        run_dir = root_dir / f"{arm}-seed{seed}"
        train_once(task, recipe, seed, run_dir, {**arm_sets, **curve}, extra)
        results = json.loads((run_dir / "results.json").read_text())
        return {"arm": arm, "seed": seed, "id": results["after"]["greedy"][metric], "curve": _curve(run_dir, metric),
                "headroom": _headroom(task, run_dir, extra, quick) if arm == "sft" else None,
                "ood": _ood(task, run_dir, extra)[metric] if has_ood else None,
                "seconds": float(run_dir.with_suffix(".seconds").read_text()) if run_dir.with_suffix(".seconds").exists() else None,
                "samples": _samples(run_dir), "steps": steps}

    def attempt(arm: str, seed: int) -> dict | str:  # one failed run must not cancel the others
        try:
            return job(arm, seed)
        except Exception as error:  # noqa: BLE001 - reported with the others' results below
            return f"{arm}-seed{seed}: {type(error).__name__}: {error}"

    with ThreadPoolExecutor(jobs) as pool:
        runs = list(pool.map(lambda pair: attempt(*pair), [(a, s) for a in arms for s in seeds]))
    failed = [r for r in runs if isinstance(r, str)]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(runs)} study runs failed; the others finished:\n" + "\n".join(failed))
    table = {}
    for arm in arms:
        mine = [r for r in runs if r["arm"] == arm]
        row = {"runs": len(mine), "seconds": statistics.fmean(r["seconds"] or 0.0 for r in mine),
               "samples": statistics.fmean(r["samples"] for r in mine), "steps": mine[0]["steps"]}
        for split in ("id", "ood"):
            values = {r["seed"]: r[split] for r in mine if r[split] is not None}
            if not values:
                continue
            base = {r["seed"]: r[split] for r in runs if r["arm"] == "sft" and r[split] is not None}
            row[split] = {"mean": statistics.fmean(values.values()),
                          "std": statistics.stdev(values.values()) if len(values) > 1 else 0.0,
                          "vs_sft": paired(values, base) if arm != "sft" else None}
        table[arm] = row
    sft_headroom = [r["headroom"] for r in runs if r["headroom"]]
    headroom = {k: statistics.fmean(h[k] for h in sft_headroom) for k in sft_headroom[0]
                if isinstance(sft_headroom[0][k], float)} if sft_headroom else None
    report = {"task": task, "metric": metric, "ood": task_member(task_cls, "ood"), "seeds": seeds, "headroom": headroom,
              "budget": "equal optimiser steps from the same untrained model; seconds and samples logged",
              "quick": quick, "arms": table, "runs": runs}
    (root_dir / "study.json").write_text(json.dumps(report, indent=1))
    plot(report, root_dir / "study.png")
    plot_curves(report, root_dir / "study_curves.png")
    return report


def plot(report: dict, path: Path) -> None:
    """Bars of each arm's in- and out-of-distribution metric (mean over seeds, std as error bars), with
    every seed's value as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(report["arms"])
    fig, ax = plt.subplots(figsize=(1.6 * len(arms) + 2, 3.2))
    for offset, split, color in ((-0.2, "id", "#4477aa"), (0.2, "ood", "#ee6677")):
        if not any(split in report["arms"][a] for a in arms):
            continue
        means = [report["arms"][a].get(split, {}).get("mean", float("nan")) for a in arms]
        stds = [report["arms"][a].get(split, {}).get("std", 0.0) for a in arms]
        x = [i + offset for i in range(len(arms))]
        ax.bar(x, means, 0.38, yerr=stds, color=color, alpha=0.8, capsize=3,
               label="in distribution" if split == "id" else "out of distribution")
        for i, arm in enumerate(arms):
            dots = [r[split] for r in report["runs"] if r["arm"] == arm and r[split] is not None]
            ax.plot([x[i]] * len(dots), dots, "k.", markersize=4)
    ax.set_xticks(range(len(arms)), arms)
    ax.set_ylabel(f"greedy {report['metric']}")
    ax.set_title(f"{report['task']}: seeds {report['seeds']}, equal optimiser steps")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(report: dict, path: Path) -> None:
    """Held-out metric against optimiser updates, one colour per arm (mean over seeds): in distribution
    solid, out of distribution dashed. Nothing is drawn for runs trained without a curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    drawn = False
    for colour, arm in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], report["arms"]):
        curves = [r["curve"] for r in report["runs"] if r["arm"] == arm and r.get("curve", {}).get("updates")]
        if not curves:
            continue
        updates = curves[0]["updates"]
        for split, style in (("id", "-"), ("ood", "--")):
            columns = [c[split] for c in curves if len(c[split]) == len(updates) and None not in c[split]]
            if columns:
                ax.plot(updates, [statistics.fmean(v) for v in zip(*columns)], style, color=colour,
                        label=f"{arm} ({'in distribution' if split == 'id' else 'OOD'})")
                drawn = True
    if not drawn:
        plt.close(fig)
        return
    ax.set_xlabel("optimiser updates")
    ax.set_ylabel(f"greedy {report['metric']}")
    ax.set_title(f"{report['task']}: held-out metric vs training budget\n(mean of seeds {report['seeds']})",
                 fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown(report: dict) -> str:
    """The study as a Markdown table: ID and OOD mean ± std, paired difference to SFT ± its SE."""
    def cell(entry):
        if not entry:
            return "-"
        text = f"{entry['mean']:.3f} ± {entry['std']:.3f}"
        vs = entry.get("vs_sft")
        if vs and vs["diff"] is not None:
            text += f" ({vs['diff']:+.3f}" + (f" ± {vs['se']:.3f})" if vs["se"] is not None else ")")
        return text

    lines = [f"{report['task']}: greedy {report['metric']}, seeds {report['seeds']} "
             f"(OOD: {report['ood'] or 'none declared'}); in brackets the paired difference to sft ± its SE",
             "| arm | steps | samples | minutes | in-distribution | out-of-distribution |", "|---|---|---|---|---|---|"]
    for arm, row in report["arms"].items():
        lines.append(f"| `{arm}` | {row['steps']} | {row['samples']:.0f} | {row['seconds'] / 60:.1f} | "
                     f"{cell(row.get('id'))} | {cell(row.get('ood'))} |")
    if report.get("headroom"):
        room = report["headroom"]
        lines.append("headroom of the sft arm's model on training prompts (mean over seeds): "
                     + ", ".join(f"{k} {v:.3f}" for k, v in room.items() if k.startswith("pass@"))
                     + f"; zero-variance groups {room['zero_variance_share']:.3f}")
        if "group_std" in room:  # a graded reward: the best of k samples against one, and their spread
            best = max((k for k in room if k.startswith("best_of_")), key=lambda k: int(k.removeprefix("best_of_")))
            lines[-1] += (f"; reward {room['best_of_1']:.4f} for one sample, {room[best]:.4f} for the "
                          f"{best.replace('_', ' ')}, spread within a prompt {room['group_std']:.4f}")
    return "\n".join(lines)
