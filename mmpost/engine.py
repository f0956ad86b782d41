"""The trainer: set up a run, then one loop over its stages, read top to bottom.

``train(cfg)`` builds the task, policy and rewards (:func:`setup_run`), evaluates the untrained
policy on the held-out split, runs each stage of the recipe (:func:`setup_stage`, then
:func:`run_stage`), evaluates again and writes the run directory:

    config.yaml      resolved config            metrics.jsonl   one JSON object per step
    checkpoints/     atomic, resumable          samples/        held-out samples before/after
    final/           from_pretrained-loadable   results.json    before/after metrics

Each stage has a kind -- ``sft``, ``rl``, ``mixed``, ``dpo``, ``spin``, ``rft`` -- whose step function
(:mod:`mmpost.stages`) turns a batch of row indices into one or more optimiser updates; this loop
owns everything around it: data order, optimiser and schedule, the frozen reference, logging,
checkpoints and evaluation. The engine speaks only the :class:`~mmpost.policy.Policy` contract (and
the capabilities a run's terms declare, checked once by :func:`mmpost.policy.check_capabilities`) and
:class:`~mmpost.types.Rollout`, so token, flow and diffusion policies share it.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from mmpost import sharding
from mmpost.adapters.lora import (AdapterDisabledReference, add_lora, checkpoint_state, has_adapters, restart_adapters,
                                 restore_state)
from mmpost.checkpoint import (check_free_space, list_checkpoints, load_checkpoint, rng_state, save_checkpoint,
                               set_rng_state, write_json_atomic)
from mmpost.config import TrainConfig
from mmpost.console import start_summary
from mmpost.model_path import build_policy
from mmpost.data.jsonl import skipped_rows
from mmpost.data_hooks import stage_rows
from mmpost.distributed import global_token_mean, mean_over_processes, shard, world
from mmpost.evaluation import blind_baseline, evaluate, heldout_kl, print_table, save_samples
from mmpost.optim import adamw, build_scheduler, optimizer_groups, select_trainable
from mmpost.policy import Critic, GenerationLength, check_capabilities, eval_mode
from mmpost.registry import REWARDS, TASKS, RewardNotRegistered, closest, load_reward_files
from mmpost.tools.report import write_model_card
from mmpost.rewarding import RunConfigured, set_error_mode as set_reward_error_mode
from mmpost.stages import STEPS, Stage, StageContext
from mmpost.tracking import RunLog, accelerator_arguments, check_trackers, flat_config, scalars
from mmpost.types import task_member

SHOWN = ("loss/sft", "loss/pg", "loss/value", "loss/preference", "reward/total/mean")


def batch_indices(seed: int, stage_index: int, step: int, batch_size: int, n: int) -> list[int]:
    """Rows of a step: epoch-wise seeded permutations, a pure function of the position (exact resume)."""
    per_epoch = max(1, n // batch_size)
    epoch, slot = divmod(step, per_epoch)
    order = np.random.default_rng([seed, stage_index, epoch]).permutation(n)
    return order[slot * batch_size:(slot + 1) * batch_size].tolist()


@contextlib.contextmanager
def timed(results: dict, phase: str):
    """Add the block's wall seconds to ``results["seconds"][phase]``: results.json says where a run's
    time went (data, model, evaluation, each stage's training)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds = results.setdefault("seconds", {})
        seconds[phase] = round(seconds.get(phase, 0.0) + time.perf_counter() - start, 3)


def resolve_rewards(cfg: TrainConfig, task) -> tuple[dict, dict]:
    names = cfg.rewards or list(task.rewards)
    if not names:
        raise ValueError("no reward functions: set `rewards` or use a task with default rewards")
    weights = cfg.reward_weights or [1.0] * len(names)
    load_reward_files(cfg.reward_files)
    missing = [n for n in names if n not in REWARDS]
    if missing:  # a function a script registered (or passed to mmpost.train) and did not register again
        raise RewardNotRegistered(f"reward {missing[0]!r} is not registered in this process: it was defined by the script that "
                       f"started the run. Register it again before resuming (mmpost.train(resume=RUN, "
                       f"rewards=[{missing[0]}]) or @mmpost.reward), or put it in a file and pass "
                       f"--reward FILE.py:{missing[0]}.{closest(missing[0], REWARDS.names())}")
    return {n: REWARDS.get(n) for n in names}, dict(zip(names, weights))


def build_task(cfg: TrainConfig):
    """The task with its training rewards and weights, and the rewards held-out evaluation reports: the
    task's metric (and its checks, e.g. that generated images still show the object) whatever rewards
    drive training. Returns ``(task, rewards, weights, eval_rewards)``."""
    task_cls = TASKS.get(cfg.task)
    rewards, weights = resolve_rewards(cfg, task_cls)
    eval_rewards = {name: REWARDS.get(name) for name in (task_cls.metric, *task_member(task_cls, "eval_rewards"))}
    eval_rewards.update(rewards)
    for fn in eval_rewards.values():
        if isinstance(fn, RunConfigured):  # e.g. the sandbox pool's size, a CLIP checkpoint
            fn.configure(cfg)
    return task_cls(cfg, reward=eval_rewards[task_cls.metric]), rewards, weights, eval_rewards


def evaluate_saved(cfg: TrainConfig, out: Path | None = None, split: str = "heldout") -> dict:
    """``mmpost eval``: the held-out evaluation of ``cfg.model`` (any saved or local model) on
    ``cfg.task``, the same one a training run reports before and after; samples to ``out``. ``split``
    "ood": the task's out-of-distribution rows (the task's ``ood`` member says what they are)."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    task, _, weights, eval_rewards = build_task(cfg)
    if split == "ood" and not task_member(task, "ood"):
        raise ValueError(f"task {cfg.task!r} declares no out-of-distribution split")
    policy = build_policy(task, cfg.model)
    if cfg.image_pixels:
        policy.set_image_pixels(cfg.image_pixels)
    with contextlib.closing(policy):
        results = evaluate(policy, task.rows(split), eval_rewards, weights, cfg.eval, task.metric,
                           task_member(task, "breakdown"))
    samples = results.pop("samples")
    if out:
        save_samples(Path(out) / "samples", samples)
        write_json_atomic(Path(out) / "results.json", results)
    return results


def stage_steps(stage: Stage, max_steps: int) -> int:
    """Steps ``stage`` runs (``max_steps`` > 0 caps every stage)."""
    return min(stage.steps, max_steps) if max_steps else stage.steps


def own_copy(reference) -> bool:
    """Whether a stage's reference is a model of its own (checkpointed with the run)."""
    return reference is not None and not getattr(reference, "shares_policy", False)


@dataclass
class Run:
    """What every stage of a run shares; built by :func:`setup_run`."""

    cfg: TrainConfig
    run_dir: Path
    task: object
    policy: object
    rewards: dict
    weights: dict
    eval_rewards: dict
    accelerator: object
    rows: dict  # row splits by name, loaded when a stage first needs them
    results: dict = field(default_factory=dict)  # results.json
    log: RunLog | None = None
    structure: object = None  # a sharded run's weightless model structure (mmpost.sharding)
    interrupted: bool = False  # Ctrl-C: checkpoint at the end of this step, then stop

    def evaluate(self, key: str) -> None:
        """The held-out evaluation as ``results[key]``, written with its samples (main process)."""
        with timed(self.results, "evaluation"):
            self.results[key] = evaluate(self.policy, self.rows["heldout"], self.eval_rewards, self.weights,
                                         self.cfg.eval, self.task.metric, task_member(self.task, "breakdown"))
        rerank = next((s.rerank for s in self.cfg.stages if s.kind == "rerank"), None)
        if rerank is not None:  # a reranker is judged on ranking held-out candidates, beside the task's metric
            from mmpost.stages.rerank import rerank_evaluation

            with eval_mode(self.policy.model):
                self.results[key]["greedy"].update(rerank_evaluation(self.policy, self.rows["heldout"], rerank,
                                                                     self.cfg.seed, self.cfg.eval.batch_size))
        self.save_results(key)

    def curve_point(self, updates: int) -> dict[str, float]:
        """The greedy metric on each ``eval.curve`` split after ``updates`` optimiser updates (``eval.every``).
        The random state is put back afterwards, so a run with a learning curve trains exactly as one without."""
        state, metric = rng_state(), self.task.metric
        point = {"updates": float(updates)}
        for split in self.cfg.eval.curve or [self.cfg.eval.split]:
            key = "heldout" if split == self.cfg.eval.split else f"curve:{split}"
            if key not in self.rows:
                self.rows[key] = self.task.rows(split)
            with timed(self.results, "evaluation"):
                result = evaluate(self.policy, self.rows[key], self.eval_rewards, self.weights,
                                  replace(self.cfg.eval, sampled=False, samples_to_save=0), metric)
            if result["greedy"].get(metric) is not None:
                point[f"eval/{split}/{metric}"] = result["greedy"][metric]
        set_rng_state(state)
        self.policy.model.train()
        return point

    def save_results(self, key: str | None = None) -> None:
        """Write ``results.json`` (and the samples of evaluation ``key``); main process only."""
        samples = self.results[key].pop("samples") if key else None
        if world()[0] != 0:
            return
        if key:
            save_samples(self.run_dir / "samples" / key, samples)
        write_json_atomic(self.run_dir / "results.json", self.results)


def train(cfg: TrainConfig, resume: str | Path | None = None) -> dict:
    """Run ``cfg`` (or continue the run in ``resume``); return the final metrics."""
    run, checkpoint = setup_run(cfg, resume)
    if world()[0] == 0:
        print(start_summary(run), flush=True)
    with contextlib.ExitStack() as cleanup:  # simulators, worker processes and files close even on errors
        cleanup.callback(run.policy.close)
        cleanup.callback(lambda: run.log and run.log.close())
        evaluate_start(run, checkpoint)
        previous_handler = None
        if threading.current_thread() is threading.main_thread():  # Ctrl-C: checkpoint, then exit cleanly
            previous_handler = signal.signal(signal.SIGINT, lambda *_: setattr(run, "interrupted", True))
        for stage_index, stage in enumerate(cfg.stages):
            if checkpoint and stage_index < checkpoint["stage_index"]:
                continue
            resumed = checkpoint if checkpoint and stage_index == checkpoint["stage_index"] else None
            ctx = setup_stage(run, stage_index, resumed)
            evaluating = run.results.get("seconds", {}).get("evaluation", 0.0)
            with timed(run.results, f"train {stage.name}"):
                run_stage(run, ctx, start=resumed["step"] if resumed else 0)
            seconds = run.results["seconds"]  # learning-curve evaluations count as evaluation, not training
            seconds[f"train {stage.name}"] = round(seconds[f"train {stage.name}"] - (seconds.get("evaluation", 0.0)
                                                                                     - evaluating), 3)
            end_stage(run, ctx)
            checkpoint = None
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)
        return finish(run)


def setup_run(cfg: TrainConfig, resume: str | Path | None) -> tuple[Run, dict | None]:
    """The run directory (with the checkpoint to resume from, if any), task, rewards, accelerator and
    the policy, checked against every capability the config's terms need."""
    torch.set_num_threads(cfg.threads)
    set_reward_error_mode(cfg.reward_errors)
    if sharding.requested(cfg.sharding) and cfg.sharding != "fsdp":  # an accelerate config asks for it:
        cfg.sharding = "fsdp"  # recorded in config.yaml, and checked against the rest of the config
        cfg.__post_init__()
    run_dir = Path(resume or cfg.output_dir or Path("runs") / f"{cfg.task}-{datetime.now():%Y%m%d-%H%M%S}")
    checkpoint = None
    if resume:
        found = list_checkpoints(run_dir)
        checkpoint = load_checkpoint(found[-1]) if found else None
        for stale in (run_dir / "checkpoints").glob(".tmp-*"):  # writes a crash cut short: never loaded
            shutil.rmtree(stale, ignore_errors=True)
    if not resume and list_checkpoints(run_dir):
        raise FileExistsError(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                              "or choose another --output-dir")
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _setup_run_in(cfg, run_dir, resume, checkpoint)
    except BaseException:
        if created and not list_checkpoints(run_dir):  # a run that never started leaves no empty directory
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _setup_run_in(cfg: TrainConfig, run_dir: Path, resume, checkpoint: dict | None) -> tuple[Run, dict | None]:
    """:func:`setup_run` once the run directory exists."""
    from accelerate import Accelerator, DistributedDataParallelKwargs

    if not os.access(run_dir, os.W_OK):
        raise PermissionError(f"output directory {run_dir} is not writable")
    cfg.output_dir = str(run_dir)
    if world()[0] == 0:
        cfg.save(run_dir / "config.yaml")
    torch.manual_seed(cfg.seed)

    results = json.loads((run_dir / "results.json").read_text()) if checkpoint else {}
    task, rewards, weights, eval_rewards = build_task(cfg)
    with timed(results, "data"):
        rows = {"heldout": task.rows(cfg.eval.split)}  # what the run reports on (eval.split: heldout | validation)
    check_trackers(cfg.trackers)
    # find_unused_parameters: a VLM on a text-only task never uses its vision tower; DDP must not wait for it
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=cfg.mixed_precision,
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
                              **accelerator_arguments(cfg.trackers, run_dir))
    if cfg.trackers:
        accelerator.init_trackers(run_dir.name, config=flat_config(cfg.to_dict()))
    with timed(results, "model"):
        policy = build_policy(task, cfg.model, device=accelerator.device)
    torch.manual_seed(cfg.seed)  # whether the task just built its default model (seeded init) or loaded it
    check_capabilities(cfg, policy)  # (a user's task may build any policy)
    if cfg.image_pixels:
        policy.set_image_pixels(cfg.image_pixels)
    if cfg.trainable or cfg.frozen:
        select_trainable(policy.model, cfg.trainable, cfg.frozen)
    if cfg.peft.r:
        add_lora(policy, cfg.peft)
    if cfg.rollout.backend == "vllm_server":
        from mmpost.adapters.vllm_sampler import check_server_prompts

        check_server_prompts(rows["heldout"][:1])  # before training, not at the first rollout
    if cfg.rollout.backend != "hf":
        policy.use_vllm(cfg.rollout, seed=cfg.seed)
    check_free_space(run_dir, policy.model, cfg.keep_checkpoints)
    if isinstance(policy, Critic) and any(s.advantage.estimator == "gae" for s in cfg.stages):
        policy.enable_value_head()  # before wrapping and before a checkpoint's weights are loaded
    if cfg.sharding != "fsdp" and world()[1] > 1 and isinstance(policy.model, sharding.CalledByMethods):
        raise ValueError(f"the {cfg.task} policy calls its network through methods other than forward "
                         f"({', '.join(policy.model.sharded_methods)}), which DistributedDataParallel cannot "
                         "synchronise: run several processes with --set sharding=fsdp")
    structure = None
    if cfg.sharding == "fsdp":
        structure = sharding.shard_model(policy.model, cfg.mixed_precision)
    else:
        policy.model = accelerator.prepare_model(policy.model)
    if checkpoint is not None:
        if ("model" in checkpoint) == (structure is not None):
            raise ValueError(f"{checkpoint['directory']} was written by a run with"
                             f"{'out' if 'model' in checkpoint else ''} sharding: resume it with the same sharding")
        if structure is not None:
            sharding.load_shards(checkpoint["directory"] / "shards", policy.model)
        else:
            restore_state(policy.model, checkpoint["model"])
    return Run(cfg, run_dir, task, policy, rewards, weights, eval_rewards, accelerator, rows, results,
               structure=structure), checkpoint


def evaluate_start(run: Run, checkpoint: dict | None) -> None:
    """The untrained policy's held-out scores (and the task's blind baseline), once per run; opens
    ``metrics.jsonl``, dropping lines after the checkpoint being resumed (all lines when starting over)."""
    if "before" not in run.results:
        run.evaluate("before")
    blind_completions = task_member(run.task, "blind_completions")
    if blind_completions is not None and "blind" not in run.results:
        run.rows.setdefault("train", run.task.rows("train"))
        blind = blind_completions(run.rows["train"], run.rows["heldout"])
        run.results["blind"] = {"what": blind[0] if len(set(blind)) == 1 else "per-row answers",
                                "score": blind_baseline(blind, run.rows["heldout"], run.eval_rewards[run.task.metric])}
        run.save_results()
    run.log = RunLog(run.run_dir / "metrics.jsonl",
                     keep_until=(checkpoint["stage_index"], checkpoint["step"]) if checkpoint else (-1, -1),
                     enabled=run.accelerator.is_main_process)


def setup_stage(run: Run, stage_index: int, checkpoint: dict | None) -> StageContext:
    """A stage's rows, adapters, optimiser, schedule and frozen reference, restored from ``checkpoint``
    when the run resumes inside this stage."""
    cfg, policy, stage = run.cfg, run.policy, run.cfg.stages[stage_index]
    steps = stage_steps(stage, cfg.max_steps)
    # a stage without steps reads no data (e.g. --set sft.steps=0 where the env has no demonstrations)
    with timed(run.results, "data"):
        train_rows = (stage_rows(stage, run.task, run.rows, policy, run.rewards, run.weights, cfg.seed, run.run_dir)
                      if steps else [])
    run.results.setdefault("training_rows", {})[stage.name] = len(train_rows)
    if world()[0] == 0 and steps:
        print(f"[{stage.name}:{stage.kind}] {len(train_rows)} training rows ({stage.data}), {steps} steps of "
              f"{stage.batch_size}", flush=True)
    trained_before = any(stage_steps(s, cfg.max_steps) for s in cfg.stages[:stage_index])
    if has_adapters(policy) and trained_before and steps > 0:
        policy.adapters_merged = True
        if checkpoint is None:  # (a resumed stage has its own)
            # Earlier stages' adapters go into the base, fresh ones train this stage: "adapters off"
            # is then this stage's starting model, the reference its KL and preference terms need.
            restart_adapters(policy)
    if run.structure is not None:  # the optimiser must hold the shards, not an evaluation's gathered weights
        sharding.resharded(policy.model)
    params = [p for p in policy.model.parameters() if p.requires_grad]
    groups = optimizer_groups(policy.model, stage.optim.lr, stage.optim.value_lr)
    optimizer = adamw(groups, stage.optim.lr, stage.optim.weight_decay)
    if run.structure is None:  # (a sharded model's optimiser works on its shards as it is)
        optimizer = run.accelerator.prepare_optimizer(optimizer)
    scheduler = build_scheduler(optimizer, stage.optim, steps * stage.updates_per_step())
    if isinstance(policy, GenerationLength):
        policy.set_generation_length(stage.sampling.max_new_tokens)
    reference = None
    if stage.needs_reference():  # frozen start-of-stage model, only when a term reads it
        if has_adapters(policy) and stage.kind != "spin":
            reference = AdapterDisabledReference(policy)  # the base itself: no second copy
        elif run.structure is not None:  # a sharded module cannot be deep-copied
            frozen = sharding.sharded_copy(policy.model, run.structure, cfg.mixed_precision)
            reference = copy.deepcopy(policy, memo={id(policy.model): frozen})
        else:
            reference = copy.deepcopy(policy)
            reference.model.requires_grad_(False).eval()
    if stage.demos.data and stage.demos.data not in run.rows and steps:
        run.rows[stage.demos.data] = run.task.rows(stage.demos.data)
    ctx = StageContext(stage, policy, reference, train_rows, run.rewards, run.weights, run.accelerator, optimizer,
                       scheduler, params, steps=steps, demo_rows=run.rows.get(stage.demos.data),
                       max_nonfinite_steps=cfg.max_nonfinite_steps, seed=cfg.seed, stage_index=stage_index,
                       refine=task_member(run.task, "refine"))
    if checkpoint is not None:
        if run.structure is not None:
            sharding.load_shards(checkpoint["directory"] / "shards", policy.model, optimizer,
                                 reference.model if own_copy(reference) else None)
        else:
            optimizer.load_state_dict(checkpoint["optimizer"])
            if checkpoint.get("reference") is not None and own_copy(reference):
                reference.model.load_state_dict(checkpoint["reference"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        ctx.state = checkpoint.get("stage_state") or {}
        set_rng_state(checkpoint["rng"])
    return ctx


def run_stage(run: Run, ctx: StageContext, start: int) -> None:
    """The loop: each step draws its rows, runs the stage kind's step function, logs, and checkpoints
    every ``checkpoint_every`` steps, at the stage's end and on Ctrl-C."""
    from tqdm.auto import tqdm

    cfg, stage = run.cfg, ctx.stage
    steps_before = sum(stage_steps(s, cfg.max_steps) for s in cfg.stages[:ctx.stage_index])  # one axis across stages
    updates_before = sum(stage_steps(s, cfg.max_steps) * s.updates_per_step() for s in cfg.stages[:ctx.stage_index])
    per_step = stage.updates_per_step()
    ctx.policy.model.train()
    bar = tqdm(range(start, ctx.steps), desc=f"[{stage.name}:{stage.kind}]", initial=start, total=ctx.steps,
               unit="step")
    for step in bar:
        started = time.perf_counter()
        ctx.step = step
        indices = batch_indices(cfg.seed, ctx.stage_index, step, stage.rows.rows_per_batch(stage.batch_size),
                                len(ctx.rows))
        with global_token_mean():  # this process's slice of the step; token means over all processes
            metrics = STEPS[stage.kind](ctx, shard(indices))
        seconds = time.perf_counter() - started
        unit = "tokens" if "tokens" in metrics else "samples"
        metrics.update({"lr": ctx.scheduler.get_last_lr()[0], "seconds": seconds,
                        f"{unit}_per_s": metrics.get(unit, 0.0) / seconds})
        if ctx.state.get("nonfinite_total"):
            metrics["skipped/nonfinite_updates"] = float(ctx.state["nonfinite_total"])
        updates = updates_before + (step + 1) * per_step
        if cfg.eval.every and updates // cfg.eval.every > (updates - per_step) // cfg.eval.every:
            metrics.update(run.curve_point(updates))  # a learning-curve point: this step crossed a multiple
        metrics = {k: v for k, v in mean_over_processes(metrics).items()  # a skipped update has no grad norm:
                   if not (isinstance(v, float) and not math.isfinite(v))}  # absent, never NaN in the log
        run.log.log({"stage": stage.name, "stage_index": ctx.stage_index, "step": step + 1, **metrics})
        if cfg.trackers:
            run.accelerator.log(scalars(metrics), step=steps_before + step + 1)
        bar.set_postfix({k.split("/")[-1] if k != "reward/total/mean" else "reward": f"{metrics[k]:.3f}"
                         for k in SHOWN if k in metrics})
        done = step + 1
        if run.interrupted or done % cfg.checkpoint_every == 0 or done == ctx.steps:
            save_stage_checkpoint(run, ctx, done)
        if run.interrupted:
            bar.close()
            print(f"\ninterrupted: checkpoint saved; continue with `mmpost train --resume {run.run_dir}`")
            raise KeyboardInterrupt
    bar.close()


def save_stage_checkpoint(run: Run, ctx: StageContext, step: int) -> None:
    """An atomic checkpoint after ``step`` steps of the current stage (main process; a sharded run's
    processes each write their shards)."""
    reference = ctx.reference
    if run.structure is not None:
        save_checkpoint(run.run_dir, ctx.stage_index, step, {
            "scheduler": ctx.scheduler.state_dict(), "stage_state": ctx.state}, keep=run.cfg.keep_checkpoints,
            shards=lambda folder: sharding.save_shards(folder, ctx.policy.model, ctx.optimizer,
                                                       reference.model if own_copy(reference) else None))
        return
    if not run.accelerator.is_main_process:
        return
    save_checkpoint(run.run_dir, ctx.stage_index, step, {
        "model": checkpoint_state(ctx.policy.model), "optimizer": ctx.optimizer.state_dict(),
        "scheduler": ctx.scheduler.state_dict(), "stage_state": ctx.state,
        "reference": reference.model.state_dict() if own_copy(reference) else None,
    }, keep=run.cfg.keep_checkpoints)


def end_stage(run: Run, ctx: StageContext) -> None:
    """How far the stage moved the model (held-out KL to its start) and, between stages, a held-out
    evaluation (e.g. SFT vs SFT+RL on the same charts)."""
    stage = ctx.stage
    if ctx.reference is not None and stage.kind != "spin":
        run.results.setdefault("kl_to_start", {})[stage.name] = heldout_kl(ctx.policy, ctx.reference,
                                                                            run.rows["heldout"], run.cfg.eval)
        run.save_results()
    if ctx.stage_index < len(run.cfg.stages) - 1 and f"after_{stage.name}" not in run.results:
        run.evaluate(f"after_{stage.name}")
        ctx.policy.model.train()


def finish(run: Run) -> dict:
    """The final held-out evaluation, ``final/``, the model card; returns the results."""
    cfg, accelerator = run.cfg, run.accelerator
    ours = {str(Path(p)) for p in (cfg.data.path, cfg.data.eval_path) if p}
    skipped = {file: n for file, n in skipped_rows().items() if file in ours}
    if skipped:
        run.results["skipped_rows"] = skipped  # data.skip_bad_rows: each row's reason was logged once
    run.evaluate("after")  # (writes results.json)
    if cfg.trackers:
        accelerator.log({f"heldout/{mode}/{key}": value for mode in ("greedy", "sampled")
                         for key, value in run.results["after"].get(mode, {}).items() if value is not None})
    if run.structure is not None:  # final/ is one plain directory: the weights gathered on the main process
        run.policy.model = sharding.full_model(run.policy.model, run.structure)
    if accelerator.is_main_process:
        merged_stages = has_adapters(run.policy) and run.policy.adapters_merged  # (saving merges them in)
        run.policy.save(run.run_dir / "final")
        write_model_card(run.run_dir, cfg, run.results)
        print_table(run.results)
        print("time: " + ", ".join(f"{phase} {seconds:.0f} s" for phase, seconds in run.results["seconds"].items()))
        before, after = (run.results.get(k, {}).get("greedy", {}).get(run.task.metric) for k in ("before", "after"))
        if cfg.max_steps and (after or 0.0) <= (before or 0.0):
            planned = ", ".join(f"{s.name} {s.steps}" for s in cfg.stages)
            print(f"note: --max-steps {cfg.max_steps} capped every stage. A run this short checks that everything "
                  f"runs; it is not expected to learn (this recipe's steps: {planned}). A quick run that learns: "
                  "`mmpost train --task reach --set rl.steps=20` (about two minutes)")
        if merged_stages:
            print("final/ holds the model with every stage's LoRA adapters merged in; there is no final/adapter/: "
                  "each stage trained its own adapters on the previous stage's merged model, so no single adapter "
                  "recreates it from the base (a run with one adapter-training stage writes final/adapter/)")
        print(f"run directory: {run.run_dir}")
    accelerator.wait_for_everyone()
    if cfg.trackers:
        accelerator.end_training()  # closes the trackers (and, in a data-parallel run, the process group): last
    return run.results
