"""The ``mmpost`` command line.

Examples::

    mmpost train --task chart2code
    mmpost train --task chart2code --max-steps 20 --set rl.sampling.group_size=4 --set data.train_size=200
    mmpost train --task chart2code --reward my_rewards.py:count_words --rewards chart_render,count_words
    mmpost train --resume runs/chart2code-20261127-101500
    mmpost config arithmetic > my.yaml && mmpost train --config my.yaml     # every field, commented
    mmpost train --task reach                                  # MuJoCo arm, few-shot SFT then PPO
    mmpost train --task reach --recipe flow_noise_grpo
    mmpost train --task reach --env maniskill:PickCube-v1 --set sft.steps=0   # GPU extra
    mmpost train --task multiview3d                            # multi-view diffusion, Flow-GRPO on MRC
    mmpost train --task multiview3d --recipe carve3d
    mmpost train --task arithmetic --recipe dpo                # any method of the library: mmpost list recipes
    mmpost list
    mmpost list recipes
    mmpost merge runs/a/final runs/b/final --method slerp --t 0.5 --out merged
    mmpost surgery runs/a/final --probe probe.pt --k 16 --out edited
    mmpost bench-sandbox --n 300
    mmpost bench-env
    mmpost bench-mrc

Errors are one line (`mmpost: error: ...`); MMPOST_DEBUG=1 in the environment shows the full traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
from pathlib import Path


def train_config(args):
    """The :class:`~mmpost.config.TrainConfig` ``mmpost train ARGS`` runs (checked, nothing loaded yet)."""
    import mmpost
    from mmpost.config import load_run_config, parse_set
    from mmpost.registry import load_reward_files, replace_reward_files

    if args.resume:
        cfg = load_run_config(args.resume)
        if args.reward:  # the run's reward files moved: the new places replace the recorded ones
            cfg.reward_files = replace_reward_files(cfg.reward_files, args.reward)
        load_reward_files(cfg.reward_files)
        return cfg
    rewards = [r for r in args.rewards.split(",") if r] if args.rewards else None
    weights = [float(w) for w in args.weights.split(",")] if args.weights else None
    overrides = parse_set(args.set or [])
    if args.env:
        overrides["env.name"] = args.env
    if args.clip_model:
        overrides["clip_model"] = args.clip_model
    return mmpost.build_config(args.task or "", model=args.model or "", recipe=args.recipe, rewards=rewards,
                               more_rewards=args.reward, weights=weights, seed=args.seed, max_steps=args.max_steps,
                               output_dir=args.output_dir, overrides=overrides, config=args.config)


def _train(args) -> None:
    from mmpost.checkpoint import CheckpointError, InsufficientSpaceError
    from mmpost.data.jsonl import DataError
    from mmpost.engine import train
    from mmpost.model_path import ModelLoadError
    from mmpost.registry import RewardNotRegistered
    from mmpost.rewarding import RewardError

    try:  # mistakes in the command line: a short message, no traceback
        cfg = train_config(args)
    except (KeyError, ValueError, FileNotFoundError, AttributeError) as error:
        _fail(error)
    try:
        train(cfg, resume=args.resume)
    except (DataError, FileExistsError, PermissionError, ImportError, ModelLoadError, RewardNotRegistered) as error:
        _fail(error)
    except (CheckpointError, InsufficientSpaceError, FloatingPointError, RewardError) as error:
        _fail(error, status=1)  # mid-run: every complete checkpoint is kept, the message says how to resume


def _fail(error: BaseException, status: int = 2) -> None:
    if os.environ.get("MMPOST_DEBUG"):
        raise error
    message = error.args[0] if isinstance(error, KeyError) and error.args else error
    print(f"mmpost: error: {message}", file=sys.stderr)
    sys.exit(status)


def _config(args) -> None:
    import mmpost
    from mmpost.config import parse_set
    from mmpost.config_file import annotated_yaml

    try:
        cfg = mmpost.build_config(args.task, recipe=args.recipe, overrides=parse_set(args.set or []))
    except (KeyError, ValueError, FileNotFoundError) as error:
        _fail(error)
    print(annotated_yaml(cfg), end="")


def _list(args) -> None:
    from mmpost.registry import ENVS, REWARDS, TASKS

    if args.what in ("all", "tasks"):
        print("tasks:   " + ", ".join(TASKS.names()))
        for name in TASKS.names():
            recipes = getattr(TASKS.get(name), "recipes", {})
            if recipes:
                print(f"  {name} recipes: " + ", ".join(recipes))
    if args.what in ("all", "models"):
        print("models (each task's default, built offline and cached in MMPOST_HOME/models; --model to change):")
        for name in TASKS.names():
            print(f"  {name:<12} {getattr(TASKS.get(name), 'default_model', '(not described)')}")
    if args.what in ("all", "rewards"):
        print("rewards: " + ", ".join(REWARDS.names()))
    if args.what in ("all", "envs"):
        print("envs:    " + ", ".join(ENVS.names()))
    if args.what in ("all", "recipes"):
        _list_recipes(markdown=args.markdown)


def _list_recipes(markdown: bool) -> None:
    from mmpost.config import STAGE_KINDS
    from mmpost.recipes import RECIPES

    if markdown:  # the README's "Methods" table
        print("| paper | recipe | terms | fidelity | tests |\n|---|---|---|---|---|")
        for name, recipe in RECIPES.items():
            print(f"| {recipe.paper} | `{name}` | {recipe.terms} | {recipe.fidelity} | `{recipe.tests}` |")
        return
    print("recipes (any token task: --recipe NAME; fidelity to the paper in brackets):")
    for name, recipe in RECIPES.items():
        print(f"  {name:<14} {recipe.paper}: {recipe.terms} [{recipe.fidelity.partition(':')[0]}]")
    print("stage kinds: " + ", ".join(STAGE_KINDS))


def _bench_sandbox(args) -> None:
    from mmpost.tools.bench.sandbox import run

    _write_json(run(args.n, workers=args.workers, attackers=args.attackers, fresh=args.fresh, repeats=args.repeats,
                    storm_honest=args.storm), args.json)


def _eval(args) -> None:
    import mmpost
    from mmpost.config import parse_set
    from mmpost.engine import evaluate_saved

    try:
        cfg = mmpost.build_config(args.task, model=args.model, overrides=parse_set(args.set or []))
    except (KeyError, ValueError, FileNotFoundError) as error:
        _fail(error)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    try:
        results = evaluate_saved(cfg, out=args.out, split=args.split)
    except ValueError as error:
        _fail(error)
    print(f"{'held-out' if args.split == 'heldout' else 'out-of-distribution'} evaluation of {args.model} on {args.task}")
    for mode in ("greedy", "sampled"):
        for key, value in sorted(results.get(mode, {}).items()):
            print(f"{mode + ' ' + key:<40}{value:10.3f}" if value is not None else f"{mode + ' ' + key:<40}{'-':>10}")


def _icl(args) -> None:
    import mmpost
    from mmpost.config import parse_set
    from mmpost.tools.icl import self_ensembled_icl

    try:
        cfg = mmpost.build_config(args.task, model=args.model, overrides=parse_set(args.set or []))
        results = self_ensembled_icl(cfg, args.shots, args.members, args.combine, args.limit)
    except (KeyError, ValueError, FileNotFoundError) as error:
        _fail(error)
    print(f"{args.task}: {results['rows']} held-out rows, {args.shots}-shot, {args.members} prompts, {args.combine}")
    for name in ("one_prompt", "ensemble"):
        print(f"  {name:<11} {results['metric_name']} {results[name]['metric']:.3f}   ECE {results[name]['ece']:.3f}")
    _write_json(results, args.json)


def _headroom(args) -> None:
    import mmpost
    from mmpost.config import parse_set
    from mmpost.tools.headroom import headroom

    try:
        cfg = mmpost.build_config(args.task, model=args.model, overrides=parse_set(args.set or []))
        report = headroom(cfg, args.prompts, args.samples, args.temperature)
    except (KeyError, ValueError, FileNotFoundError) as error:
        _fail(error)
    print(f"{args.task}: {report['prompts']} training prompts x {report['samples']} samples at T={args.temperature}")
    print("  " + "  ".join(f"{k} {v:.3f}" for k, v in report.items() if k.startswith("pass@")))
    print(f"  prompts whose samples all agree (zero reward variance in a group of {report['samples']}): "
          f"{report['zero_variance_share']:.3f}; never solved: {report['never_solved_share']:.3f}")
    if "group_std" in report:  # the graded view: no threshold
        print("  reward, expected best of k: " + "  ".join(
            f"{k.removeprefix('best_of_')} {v:.4f}" for k, v in report.items() if k.startswith("best_of_"))
            + f"; spread within a prompt's samples (std) {report['group_std']:.4f}")
    _write_json(report, args.json)


def _study(args) -> None:
    from mmpost.config import parse_set
    from mmpost.tools.study import markdown, study

    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        report = study(args.task, seeds, args.arms.split(",") if args.arms else None, args.root, args.jobs,
                       args.quick, parse_set(args.set or []))
    except (KeyError, ValueError, RuntimeError) as error:
        _fail(error)
    print(markdown(report))


def _damo(args) -> None:
    import mmpost
    from mmpost.config import parse_set
    from mmpost.tools.damo import damo

    try:
        cfg = mmpost.build_config(args.task, model=args.model, overrides=parse_set(args.set or []))
        report = damo(cfg, args.stage, args.splits.split(",") if args.splits else None, args.trials, args.trial_steps,
                      args.batch, args.out)
    except (KeyError, ValueError, FileNotFoundError) as error:
        _fail(error)
    print(f"predictor R^2 on the {len(report['trials'])} trials: {report['predictor_r2']:.3f}")
    for entry in report["ranking"][:3]:
        print(f"  {entry['mixture']}  predicted mean {entry['predicted_mean']:.3f}")
    sets = " ".join("--set " + shlex.quote(f"{k}={json.dumps(v, separators=(',', ':')) if isinstance(v, dict) else v}")
                    for k, v in report["overrides"].items())
    print(f"train it: mmpost train --task {args.task} {sets}")


def _export(args) -> None:
    from mmpost.adapters.lora import export_adapter

    try:
        export_adapter(args.adapter, args.out, base=args.base)
    except (FileNotFoundError, ValueError, OSError) as error:
        _fail(error)
    print(f"merged {args.adapter} into its base; wrote {args.out}")


def _report(args) -> None:
    from mmpost.tools.report import write_report

    try:
        path = write_report(args.run_dir, samples=args.samples)
    except FileNotFoundError as error:
        _fail(error)
    print(f"wrote {path}")


def _completion(args) -> None:
    """A bash completion script for every command and option (and task / recipe names)."""
    import mmpost
    from mmpost.recipes import RECIPES

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    cases = "\n".join(
        f'        {name}) opts="{" ".join(o for a in sub._actions for o in a.option_strings)}" ;;'
        for name, sub in commands.items())
    print(f"""# mmpost bash completion: eval "$(mmpost completion)"  (or save it under /etc/bash_completion.d/)
_mmpost() {{
    local cur prev cmd opts
    cur="${{COMP_WORDS[COMP_CWORD]}}"; prev="${{COMP_WORDS[COMP_CWORD-1]}}"; cmd="${{COMP_WORDS[1]}}"
    if [ "$COMP_CWORD" -eq 1 ]; then COMPREPLY=($(compgen -W "{' '.join(commands)}" -- "$cur")); return; fi
    case "$prev" in
        --task) COMPREPLY=($(compgen -W "{' '.join(mmpost.TASKS.names())}" -- "$cur")); return ;;
        --recipe) COMPREPLY=($(compgen -W "{' '.join(RECIPES)}" -- "$cur") $(compgen -f -- "$cur")); return ;;
    esac
    case "$cmd" in
{cases}
        *) opts="" ;;
    esac
    COMPREPLY=($(compgen -W "$opts" -- "$cur") $(compgen -f -- "$cur"))
}}
complete -F _mmpost mmpost""")


def _doctor(args) -> None:
    from mmpost.tools.doctor import report

    report()


def _setup(args) -> None:
    from mmpost.tools.setup import setup

    try:
        for what in args.what:
            for line in setup(what, data=args.data):
                print(line, flush=True)
    except RuntimeError as error:
        sys.exit(f"mmpost setup: {error}")


def _bench(args) -> None:
    from mmpost.tools.bench.trl import run

    try:
        run(quick=args.quick, repeats=args.repeats, cases=args.cases.split(",") if args.cases else None,
            scaling=not args.no_scaling, out=args.json, device=args.device)
    except RuntimeError as error:
        sys.exit(str(error))


def _bench_env(args) -> None:
    from mmpost.tools.bench.env import run

    _write_json(run(args.envs, iterations=args.iterations, quick=args.quick), args.json)


def _bench_mrc(args) -> None:
    from mmpost.tools.bench.mrc import run

    if args.nerfstudio:
        from mmpost.tools.bench.mrc import backend_agreement

        _write_json(backend_agreement(args.objects, iterations=args.nerf_iterations), args.json)
        return
    _write_json(run(args.objects, iterations=args.iterations, quick=args.quick), args.json)


def _write_json(results: dict, path: str | None) -> None:
    import json

    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmpost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a task (SFT then RL by default)",
                       description="examples: mmpost train --task chart2code; mmpost train --task arithmetic --recipe dpo; "
                                   "mmpost train --task grounding --set peft.r=16 --set rl.kl.coef=0.05; "
                                   "mmpost train --resume runs/chart2code-X")
    t.add_argument("--task", help="task name (see `mmpost list`; default chart2code, or --config's task)")
    t.add_argument("--config", metavar="FILE.yaml",
                   help="a full config to start from: `mmpost config TASK`'s output or a run's config.yaml")
    t.add_argument("--model", help="local path, run directory or hub id of a checkpoint (default: tiny offline model)")
    t.add_argument("--recipe", help="a task's named recipe (`mmpost list`) or a YAML file with `stages:`")
    t.add_argument("--env", help="simulator for robot tasks: reach (default), maniskill:ENV_ID, libero:SUITE")
    t.add_argument("--clip-model", help="CLIP for video_semantic: ARCH:CHECKPOINT of local open_clip weights "
                                        "(default: a tiny open_clip model trained on the task's frames)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field (repeatable)")
    t.add_argument("--rewards", help="comma-separated reward names (default: the task's)")
    t.add_argument("--weights", help="comma-separated reward weights")
    t.add_argument("--reward", action="append", metavar="FILE.py:FUNCTION",
                   help="load a reward function from a file outside the package (repeatable)")
    t.add_argument("--max-steps", type=int, help="cap every stage at this many steps")
    t.add_argument("--seed", type=int)
    t.add_argument("--output-dir", help="run directory (default runs/<task>-<timestamp>)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    t.set_defaults(func=_train)
    c = sub.add_parser("config", help="print a task's full config, a comment on every field (for --config)",
                       description="examples: mmpost config arithmetic > my.yaml; mmpost train --config my.yaml; "
                                   "mmpost config reach --recipe flow_noise_ppo --set rl.steps=50")
    c.add_argument("task", help="task name (see `mmpost list`)")
    c.add_argument("--recipe", help="a task's named recipe, a library method or a YAML file of stages")
    c.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field (repeatable)")
    c.set_defaults(func=_config)
    ls = sub.add_parser("list", help="list tasks, recipes, rewards and environments",
                        description="examples: mmpost list; mmpost list recipes; mmpost list recipes --markdown")
    ls.add_argument("what", nargs="?", default="all", choices=["all", "tasks", "recipes", "rewards", "models", "envs"])
    ls.add_argument("--markdown", action="store_true", help="recipes as the README's Markdown table")
    ls.set_defaults(func=_list)
    ev = sub.add_parser("eval", help="evaluate a saved model on a task's held-out split",
                        description="examples: mmpost eval --model runs/chart2code-X/final --task chart2code; "
                                    "mmpost eval --model ./Qwen2-VL-2B --task grounding --set eval.sampled=false")
    ev.add_argument("--model", required=True, help="a saved model directory (or hub id you have locally)")
    ev.add_argument("--task", default="chart2code")
    ev.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override (eval.*, data.*, ...)")
    ev.add_argument("--out", help="write results.json and the samples here")
    ev.add_argument("--split", choices=["heldout", "ood"], default="heldout",
                    help="ood: the task's out-of-distribution rows (README: out-of-distribution splits)")
    ev.set_defaults(func=_eval)
    ic = sub.add_parser("icl", help="self-ensembled in-context learning: the no-training baseline, with calibration",
                        description="examples: mmpost icl --task arithmetic --model runs/arithmetic-X/final --shots 2 "
                                    "--members 5; mmpost icl --task audio_qa --combine vote --limit 50")
    ic.add_argument("--task", default="arithmetic")
    ic.add_argument("--model", default="", help="a saved model directory (default: the task's own start model)")
    ic.add_argument("--shots", type=int, default=2, help="solved training rows shown before each question")
    ic.add_argument("--members", type=int, default=5, help="prompts (draws of examples) per question")
    ic.add_argument("--combine", choices=["max", "mean", "vote"], default="max")
    ic.add_argument("--limit", type=int, default=0, help="evaluate the first N held-out rows (0: all)")
    ic.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override (seed, threads, ...)")
    ic.add_argument("--json", help="also write the results to this file")
    ic.set_defaults(func=_icl)
    hr = sub.add_parser("headroom", help="pass@k vs pass@1 of a model on training prompts: what RL can sharpen",
                        description="examples: mmpost headroom --task arithmetic --model runs/arithmetic-X/final; "
                                    "mmpost headroom --task audio_qa --model DIR --prompts 128 --samples 16")
    hr.add_argument("--task", default="arithmetic")
    hr.add_argument("--model", default="", help="a saved model directory (default: the task's start model)")
    hr.add_argument("--prompts", type=int, default=64, help="training prompts sampled")
    hr.add_argument("--samples", type=int, default=8, help="samples per prompt (n; pass@k for k <= n)")
    hr.add_argument("--temperature", type=float, default=1.0)
    hr.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override")
    hr.add_argument("--json", help="also write the results to this file")
    hr.set_defaults(func=_headroom)
    st = sub.add_parser("study", help="SFT vs SFT+RL vs the blends, same start and budget, several seeds, ID and OOD",
                        description="examples: mmpost study --task arithmetic --seeds 0,1,2 --jobs 2; "
                                    "mmpost study --task reach --arms sft,sft_rl --seeds 0,1,2; "
                                    "mmpost study --task arithmetic --quick")
    st.add_argument("--task", default="arithmetic")
    st.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    st.add_argument("--arms", help="comma-separated among sft, sft_answer_only, sft_rl, chord, luffy, relift (default: "
                    "every arm the task can run: the blends need a token policy, sft_answer_only reasoning "
                    "demonstrations)")
    st.add_argument("--jobs", type=int, default=1, help="runs at a time (each uses --set threads=N torch threads)")
    st.add_argument("--root", default="", help="the runs and study.json (default: runs/study-TASK)")
    st.add_argument("--quick", action="store_true", help="a few steps per run (the test suite's version)")
    st.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override passed to every run")
    st.set_defaults(func=_study)
    dm = sub.add_parser("damo", help="DaMo: learn which mixture of a stage's row splits trains best, from short trials",
                        description="examples: mmpost damo --task arithmetic --trials 8; mmpost damo --task arithmetic "
                                    "--splits three_step,two_step --trial-steps 300 --out runs/damo")
    dm.add_argument("--task", default="arithmetic")
    dm.add_argument("--model", default="")
    dm.add_argument("--stage", default="sft", help="the stage whose rows are mixed")
    dm.add_argument("--splits", help="comma-separated row splits (default: the task's abilities)")
    dm.add_argument("--trials", type=int, default=8, help="short runs on random mixtures")
    dm.add_argument("--trial-steps", type=int, default=0, help="steps of each trial (default: the stage's / 4)")
    dm.add_argument("--batch", type=int, default=16, help="mixtures are compositions of this many rows")
    dm.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override")
    dm.add_argument("--out", default="", help="trial runs and damo.json (default: runs/damo-TASK)")
    dm.set_defaults(func=_damo)
    ex = sub.add_parser("export", help="merge a LoRA adapter into its base model and save it",
                        description="example: mmpost export runs/arithmetic-X/final/adapter --out merged/")
    ex.add_argument("adapter", help="a PEFT adapter directory (adapter_config.json)")
    ex.add_argument("--out", required=True)
    ex.add_argument("--base", help="the base model (default: the one recorded in the adapter)")
    ex.set_defaults(func=_export)
    rp = sub.add_parser("report", help="write an HTML report of a run: curves, held-out table, sample gallery",
                        description="example: mmpost report runs/chart2code-20261127-101500  (opens as RUN_DIR/report/index.html)")
    rp.add_argument("run_dir")
    rp.add_argument("--samples", type=int, default=8, help="samples shown per evaluation")
    rp.set_defaults(func=_report)
    cp = sub.add_parser("completion", help="print a bash completion script",
                        description='example: eval "$(mmpost completion)"')
    cp.set_defaults(func=_completion)
    dr = sub.add_parser("doctor", help="versions, optional extras, sandbox confinement and device",
                        description="example: mmpost doctor")
    dr.set_defaults(func=_doctor)
    su = sub.add_parser("setup", help="install what an optional simulator or backend needs beyond pip (software Vulkan, a private environment), then check it",
                        description="examples: mmpost setup maniskill  (after pip install 'mmpost[maniskill]'); "
                                    "mmpost setup libero --data libero-data.tar.gz")
    su.add_argument("what", nargs="+", choices=["maniskill", "libero", "nerfstudio"])
    su.add_argument("--data", help="libero: a local copy of LIBERO's data folders (a tarball or a folder); "
                                   "default: shared/libero/libero-data.tar.gz above the working directory")
    su.set_defaults(func=_setup)
    bench = sub.add_parser("bench", help="mmpost vs TRL side by side: GRPO and SFT throughput, step split, peak RSS",
                           description="examples: mmpost bench --quick; mmpost bench --repeats 5 --json runs/bench.json")
    bench.add_argument("--quick", action="store_true", help="3 steps, 1 repeat (a smoke test)")
    bench.add_argument("--repeats", type=int, default=3, help="runs per system and case (median reported)")
    bench.add_argument("--cases", help="comma-separated subset of grpo_vlm,grpo_text,sft_vlm,sft_vlm_padding_free")
    bench.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                       help="cpu: hide any GPU; cuda: require one (the tiny models; real sizes: scripts/gpu_bench.py)")
    bench.add_argument("--no-scaling", action="store_true", help="skip the scaling sweep")
    bench.add_argument("--json", help="write the report here")
    bench.set_defaults(func=_bench)
    b = sub.add_parser("bench-sandbox", help="sandboxed chart executions/min, honest throughput under attack, "
                       "warm fork-server vs fresh interpreter",
                       description="examples: mmpost bench-sandbox; mmpost bench-sandbox --n 100 --attackers 0.5")
    b.add_argument("--n", type=int, default=200, help="honest chart programs per condition")
    b.add_argument("--workers", type=int, default=2)
    b.add_argument("--attackers", type=float, default=0.25, help="fraction of hostile jobs in the attacked run")
    b.add_argument("--fresh", type=int, default=20, help="jobs timed with a fresh interpreter each")
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--storm", type=int, default=300, help="honest programs in the storm of hostile jobs of every "
                   "class (each checked against a fresh sandbox); 0 skips it")
    b.add_argument("--json", help="also write the results here")
    b.set_defaults(func=_bench_sandbox)
    e = sub.add_parser("bench-env", help="simulator throughput and RL iteration cost split (reach scene)",
                       description="examples: mmpost bench-env; mmpost bench-env --envs 16 --quick")
    e.add_argument("--envs", type=int, default=64, help="parallel envs")
    e.add_argument("--iterations", type=int, default=6, help="RL iterations per case (median reported)")
    e.add_argument("--quick", action="store_true", help="short version (for tests)")
    e.add_argument("--json", help="also write the results to this file")
    e.set_defaults(func=_bench_env)
    m = sub.add_parser("bench-mrc", help="MRC reward seconds per object; multiview3d RL iteration cost split",
                       description="examples: mmpost bench-mrc; mmpost bench-mrc --objects 4 --quick; "
                                   "mmpost bench-mrc --nerfstudio --objects 4")
    m.add_argument("--objects", type=int, default=8)
    m.add_argument("--iterations", type=int, default=4)
    m.add_argument("--quick", action="store_true", help="short version (for tests)")
    m.add_argument("--nerfstudio", action="store_true", help="instead: agreement of the nerfacto backend with the voxel "
                   "one on --objects objects x 5 conditions (after mmpost setup nerfstudio)")
    m.add_argument("--nerf-iterations", type=int, default=600, help="nerfacto iterations per tile (--nerfstudio)")
    m.add_argument("--json", help="also write the results to this file")
    m.set_defaults(func=_bench_mrc)
    mg = sub.add_parser("merge", help="merge saved models: linear, SLERP or TIES",
                        description="examples:\n  mmpost merge A B --method slerp --t 0.3 --out merged\n"
                        "  mmpost merge INSTRUCT TUNED --method slerp --t domain_adaptation --out merged\n"
                        "  mmpost merge A B --method ties --base BASE --density 0.2 --out merged\n"
                        "  mmpost merge A B C --method linear --weights 0.5,0.3,0.2 --out merged",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    mg.add_argument("models", nargs="+", help="save_pretrained directories of one architecture")
    mg.add_argument("--out", required=True)
    mg.add_argument("--method", choices=["linear", "slerp", "ties"], default="linear")
    mg.add_argument("--weights", help="linear: comma-separated weights (normalised to sum 1)")
    mg.add_argument("--t", default="0.5", help="slerp: 0 = first model, 1 = second; or a per-layer schedule "
                    "'self_attn=0,0.5,1; mlp=1,0.5,0; 0.5' (mergekit's gradients) or 'domain_adaptation' (arXiv 2409.03444)")
    mg.add_argument("--base", help="ties: the model the others were fine-tuned from")
    mg.add_argument("--density", type=float, default=0.2, help="ties: fraction of each task vector kept")
    mg.add_argument("--scale", type=float, default=1.0, help="ties: lambda on the merged task vector")
    mg.set_defaults(func=_merge)
    sg = sub.add_parser("surgery", help="edit a saved model's rows along a probe direction (Model Surgery)",
                        description="example: mmpost surgery MODEL --probe probe.pt --k 16 --alpha 1.0 --out edited")
    sg.add_argument("model")
    sg.add_argument("--probe", required=True, help="a torch.save-d 1-D tensor (or .safetensors with 'probe')")
    sg.add_argument("--out", required=True)
    sg.add_argument("--pattern", default="mlp.gate_proj.weight", help="which matrices' rows may be edited")
    sg.add_argument("--k", type=int, default=16, help="rows edited, over all matching matrices")
    sg.add_argument("--alpha", type=float, default=1.0)
    sg.set_defaults(func=_surgery)
    return parser


def _merge(args) -> None:
    from mmpost.tools.weights import merge_checkpoints

    try:
        weights = [float(w) for w in args.weights.split(",")] if args.weights else None
        t = float(args.t) if re.fullmatch(r"[-+.\d]+", args.t.strip()) else args.t
        merge_checkpoints(args.models, args.out, args.method, weights=weights, t=t, base=args.base,
                          density=args.density, scale=args.scale)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        _fail(error)
    print(f"merged ({args.method}) into {args.out}")


def _surgery(args) -> None:
    from mmpost.tools.weights import surgery_checkpoint

    try:
        edited = surgery_checkpoint(args.model, args.probe, args.out, args.pattern, args.k, args.alpha)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        _fail(error)
    layers = sorted({name for name, _ in edited})
    print(f"edited {len(edited)} rows in {len(layers)} matrices; wrote {args.out}")


def main(argv: list[str] | None = None) -> None:
    from mmpost.console import configure_console

    configure_console()
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        sys.exit(130)



if __name__ == "__main__":
    main()
