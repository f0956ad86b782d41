"""The trainer: one loop, read top to bottom.

``train(cfg)`` builds the task, policy and rewards, evaluates the untrained policy on the
held-out split, runs each stage of the recipe, evaluates again and writes the run directory:

    config.yaml      resolved config            metrics.jsonl   one JSON object per step
    checkpoints/     atomic, resumable          samples/        held-out samples before/after
    final/           from_pretrained-loadable   results.json    before/after metrics

Each stage has a kind -- ``sft``, ``rl``, ``mixed``, ``dpo``, ``spin``, ``rft`` -- whose step function
(:mod:`mmpost.stages`) turns a batch of row indices into one or more optimiser updates; this loop
owns everything around it: data order, optimiser and schedule, the frozen reference, logging,
checkpoints and evaluation. The engine speaks only the :class:`~mmpost.policy.Policy` contract and
:class:`~mmpost.types.Rollout`, so token, flow and diffusion policies share it.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import json
import math
import os
import shutil
import signal
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from mmpost.adapters.lora import (AdapterDisabledReference, add_lora, checkpoint_state, has_adapters, restart_adapters,
                                 restore_state)
from mmpost.checkpoint import (check_free_space, list_checkpoints, load_checkpoint, save_checkpoint, set_rng_state,
                               write_json_atomic)
from mmpost.config import Stage, TrainConfig
from mmpost.curation import lowest_reward_rows
from mmpost.distributed import global_token_mean, mean_over_processes, shard, world
from mmpost.evaluation import blind_baseline, evaluate, heldout_kl, print_table, save_samples
from mmpost.mixing import mixed_rows
from mmpost.pruning import donod_rows
from mmpost.registry import REWARDS, TASKS
from mmpost.report import write_model_card
from mmpost.rewarding import set_error_mode as set_reward_error_mode
from mmpost.tracking import accelerator_arguments, check_trackers, flat_config, scalars
from mmpost.stages import STEPS, StageContext, needs_reference, token_only_reason, updates_per_step


def batch_indices(seed: int, stage_index: int, step: int, batch_size: int, n: int) -> list[int]:
    """Rows of a step: epoch-wise seeded permutations, a pure function of the position (exact resume)."""
    per_epoch = max(1, n // batch_size)
    epoch, slot = divmod(step, per_epoch)
    order = np.random.default_rng([seed, stage_index, epoch]).permutation(n)
    return order[slot * batch_size:(slot + 1) * batch_size].tolist()


def build_scheduler(optimizer, stage: Stage, total: int):
    warmup = int(stage.warmup * total)

    def factor(i: int) -> float:
        if i < warmup:
            return (i + 1) / warmup
        progress = (i - warmup) / max(1, total - warmup)
        if stage.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if stage.schedule == "linear":
            return max(0.0, 1 - progress)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class RunLog:
    """``metrics.jsonl``: one line per step, flushed, truncated back to the checkpoint on resume
    (written by the main process only; ``enabled=False`` elsewhere)."""

    def __init__(self, path: Path, keep_until: tuple[int, int], enabled: bool = True):
        self.path, self.file = path, None
        if not enabled:
            return
        if path.exists():
            kept = []
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:  # a line cut short by a crash
                    continue
                if (record["stage_index"], record["step"]) <= keep_until:
                    kept.append(line)
            path.write_text("".join(line + "\n" for line in kept))
        self.file = path.open("a")

    def log(self, record: dict) -> None:
        if self.file is None:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()


def build_task(cfg: TrainConfig):
    """The task with its training rewards and weights, and the rewards held-out evaluation reports: the
    task's metric (and its checks, e.g. that generated images still show the object) whatever rewards
    drive training. Returns ``(task, rewards, weights, eval_rewards)``."""
    task_cls = TASKS.get(cfg.task)
    rewards, weights = resolve_rewards(cfg, task_cls)
    eval_rewards = {name: REWARDS.get(name) for name in (task_cls.metric, *getattr(task_cls, "eval_rewards", ()))}
    eval_rewards.update(rewards)
    for fn in eval_rewards.values():
        if hasattr(fn, "workers"):  # rewards backed by a sandbox pool
            fn.workers = cfg.sandbox_workers
        if hasattr(fn, "clip_model"):  # rewards scoring with a CLIP model
            fn.clip_model = cfg.clip_model
    return task_cls(cfg, reward=eval_rewards[task_cls.metric]), rewards, weights, eval_rewards


def evaluate_saved(cfg: TrainConfig, out: Path | None = None) -> dict:
    """``mmpost eval``: the held-out evaluation of ``cfg.model`` (any saved or local model) on
    ``cfg.task``, the same one a training run reports before and after; samples to ``out``."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    task, _, weights, eval_rewards = build_task(cfg)
    policy = task.policy()
    if cfg.image_pixels:
        policy.set_image_pixels(cfg.image_pixels)
    with contextlib.closing(policy):
        results = evaluate(policy, task.rows("heldout"), eval_rewards, weights, cfg.eval, task.metric,
                           getattr(task, "breakdown", ""))
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


def _save_results(run_dir: Path, results: dict, key: str | None = None) -> None:
    """Write ``results.json`` (and the samples of evaluation ``key``); main process only."""
    samples = results[key].pop("samples") if key else None
    if world()[0] != 0:
        return
    if key:
        save_samples(run_dir / "samples" / key, samples)
    write_json_atomic(run_dir / "results.json", results)


def resolve_rewards(cfg: TrainConfig, task) -> tuple[dict, dict]:
    names = cfg.rewards or list(task.rewards)
    if not names:
        raise ValueError("no reward functions: set `rewards` or use a task with default rewards")
    weights = cfg.reward_weights or [1.0] * len(names)
    return {n: REWARDS.get(n) for n in names}, dict(zip(names, weights))


SHOWN = ("loss/sft", "loss/pg", "loss/value", "loss/preference", "reward/total/mean")


def stage_rows(stage: Stage, task, rows: dict, policy, rewards: dict, weights: dict, seed: int,
               run_dir: Path) -> list[dict]:
    """The rows ``stage`` trains on: its split, plus shares of others (``mix``, DMT), then narrowed
    to the prompts the model does worst on (``curate``, Carve3D) or the best share by DONOD
    (``donod``). Choices that depend on the model are recorded in the run directory (resume)."""
    for split in (stage.data, *stage.mix):
        if split not in rows:
            rows[split] = task.rows(split)
    train_rows = mixed_rows(rows[stage.data], rows, stage.mix, seed) if stage.mix else rows[stage.data]
    if stage.kind == "rl" and stage.curate:
        train_rows = lowest_reward_rows(policy, train_rows, rewards, weights, *stage.curate, stage.group_size,
                                        stage.batch_size, run_dir / f"curated-{stage.name}.json")
    if stage.donod:
        train_rows = donod_rows(policy, train_rows, stage.donod, stage.lr, stage.batch_size,
                                run_dir / f"donod-{stage.name}.json")
    return train_rows


def check_policy_supports(stage: Stage, policy) -> None:
    """Fail before the stage's first step when a term needs what this policy kind lacks."""
    reason = token_only_reason(stage)
    if reason and not hasattr(policy, "demo_rollout"):
        raise ValueError(f"stage {stage.name!r}: {reason} needs a token policy (demonstrations as token "
                         f"sequences); {type(policy).__name__} is not one")
    if stage.kl_estimator == "closed_form" and stage.kind in ("rl", "mixed") and not hasattr(policy, "logprobs_and_kl"):
        raise ValueError(f"stage {stage.name!r}: kl_estimator 'closed_form' needs a policy with Gaussian "
                         f"transitions (logprobs_and_kl); {type(policy).__name__} has none: use 'k3'")


def _default_output_dir(cfg: TrainConfig) -> Path:
    return Path("runs") / f"{cfg.task}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def select_trainable(model: torch.nn.Module, trainable: list[str], frozen: list[str]) -> int:
    """Train only parameters whose name matches a ``trainable`` pattern (all when empty) and no
    ``frozen`` pattern; return how many tensors train. A pattern matching nothing is an error (a
    typo would otherwise silently train the wrong modules)."""
    def matches(name: str, pattern: str) -> bool:
        return fnmatch.fnmatch(name, pattern if "*" in pattern else f"*{pattern}*")

    names = [name for name, _ in model.named_parameters()]
    for pattern in [*trainable, *frozen]:
        if not any(matches(name, pattern) for name in names):
            raise ValueError(f"parameter pattern {pattern!r} matches no parameter of {type(model).__name__}; "
                             f"names look like {names[0]!r}, {names[len(names) // 2]!r}")
    count = 0
    for name, parameter in model.named_parameters():
        chosen = (not trainable or any(matches(name, p) for p in trainable)) and \
            not any(matches(name, p) for p in frozen)
        parameter.requires_grad_(chosen)
        count += chosen
    if not count:
        raise ValueError(f"trainable={trainable} / frozen={frozen} leave no parameter to train")
    return count


def train(cfg: TrainConfig, resume: str | Path | None = None) -> dict:
    """Run ``cfg`` (or continue the run in ``resume``); return the final metrics."""
    from accelerate import Accelerator, DistributedDataParallelKwargs

    torch.set_num_threads(cfg.threads)
    set_reward_error_mode(cfg.reward_errors)
    run_dir = Path(resume or cfg.output_dir or _default_output_dir(cfg))
    checkpoint = None
    if resume:
        found = list_checkpoints(run_dir)
        checkpoint = load_checkpoint(found[-1]) if found else None
        for stale in (run_dir / "checkpoints").glob(".tmp-*"):  # writes a crash cut short: never loaded
            shutil.rmtree(stale, ignore_errors=True)
    if not resume and list_checkpoints(run_dir):
        raise FileExistsError(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                              "or choose another --output-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(run_dir, os.W_OK):
        raise PermissionError(f"output directory {run_dir} is not writable")
    cfg.output_dir = str(run_dir)
    if world()[0] == 0:
        cfg.save(run_dir / "config.yaml")
    torch.manual_seed(cfg.seed)

    task, rewards, weights, eval_rewards = build_task(cfg)
    rows = {"heldout": task.rows("heldout")}  # row splits by name, loaded when a stage first needs them
    check_trackers(cfg.trackers)
    # find_unused_parameters: a VLM on a text-only task never uses its vision tower; DDP must not wait for it
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=cfg.mixed_precision,
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
                              **accelerator_arguments(cfg.trackers, run_dir))
    if cfg.trackers:
        accelerator.init_trackers(run_dir.name, config=flat_config(cfg.to_dict()))
    policy = task.policy(device=accelerator.device)
    torch.manual_seed(cfg.seed)  # whether the task just built its default model (seeded init) or loaded it
    if cfg.image_pixels:
        policy.set_image_pixels(cfg.image_pixels)
    if cfg.trainable or cfg.frozen:
        select_trainable(policy.model, cfg.trainable, cfg.frozen)
    if cfg.peft.r:
        if not hasattr(policy, "demo_logprobs"):
            raise ValueError(f"peft: LoRA adapters are supported on token policies; task {cfg.task!r} trains a "
                             f"{type(policy).__name__}")
        add_lora(policy, cfg.peft)
    if cfg.rollout.backend == "vllm":
        if not hasattr(policy, "use_vllm"):
            raise ValueError(f"rollout.backend=vllm samples token policies; task {cfg.task!r} trains a "
                             f"{type(policy).__name__}")
        policy.use_vllm(cfg.rollout, seed=cfg.seed)
    check_free_space(run_dir, policy.model, cfg.keep_checkpoints)
    if any(s.advantage == "gae" for s in cfg.stages) and hasattr(policy, "enable_value_head"):
        policy.enable_value_head()  # before wrapping and before a checkpoint's weights are loaded
    with contextlib.closing(policy):  # simulators and worker processes go away even on errors
        return _train_stages(cfg, run_dir, checkpoint, task, policy, rows, rewards, weights, eval_rewards,
                             accelerator)


def adamw(groups: list[dict], stage) -> torch.optim.AdamW:
    """AdamW over ``groups``, with torch's fused kernel where it applies (plain floating-point
    parameters on one CPU or CUDA device type): one kernel for all parameters instead of a dozen
    small ops per parameter (the optimizer step of the tiny default VLM: 1.8 ms -> 0.5 ms on CPU).
    Sharded (DTensor) or quantized parameters get the default implementation."""
    params = [p for group in groups for p in group["params"]]
    fusable = (all(type(p.data) is torch.Tensor and p.is_floating_point() for p in params)
               and len({p.device.type for p in params}) == 1 and params[0].device.type in ("cpu", "cuda"))
    return torch.optim.AdamW(groups, lr=stage.lr, weight_decay=stage.weight_decay, fused=fusable or None)


def _train_stages(cfg, run_dir, checkpoint, task, policy, rows, rewards, weights, eval_rewards, accelerator):
    """Evaluate, run every stage (resuming at ``checkpoint``), evaluate again, save."""
    from tqdm.auto import tqdm

    eval_rows = rows["heldout"]
    breakdown = getattr(task, "breakdown", "")  # a row column the held-out metric is also reported by
    policy.model = accelerator.prepare_model(policy.model)
    if checkpoint is not None:
        restore_state(policy.model, checkpoint["model"])

    results = json.loads((run_dir / "results.json").read_text()) if checkpoint else {}
    if "before" not in results:
        results["before"] = evaluate(policy, eval_rows, eval_rewards, weights, cfg.eval, task.metric, breakdown)
        _save_results(run_dir, results, "before")
    if hasattr(task, "blind_completions") and "blind" not in results:
        rows.setdefault("train", task.rows("train"))
        blind = task.blind_completions(rows["train"], eval_rows)
        results["blind"] = {"what": blind[0] if len(set(blind)) == 1 else "per-row answers",
                            "score": blind_baseline(blind, eval_rows, eval_rewards[task.metric])}
        _save_results(run_dir, results)

    interrupted = {"flag": False}
    previous_handler = None
    if threading.current_thread() is threading.main_thread():  # Ctrl-C: checkpoint, then exit cleanly
        previous_handler = signal.signal(signal.SIGINT, lambda *_: interrupted.update(flag=True))
    # Lines after the checkpoint being resumed (or all lines, when starting over) are dropped.
    log = RunLog(run_dir / "metrics.jsonl",
                 keep_until=(checkpoint["stage_index"], checkpoint["step"]) if checkpoint else (-1, -1),
                 enabled=accelerator.is_main_process)
    for stage_index, stage in enumerate(cfg.stages):
        if checkpoint and stage_index < checkpoint["stage_index"]:
            continue
        steps = stage_steps(stage, cfg.max_steps)
        check_policy_supports(stage, policy)
        train_rows = stage_rows(stage, task, rows, policy, rewards, weights, cfg.seed, run_dir)
        trained_before = any(stage_steps(s, cfg.max_steps) for s in cfg.stages[:stage_index])
        if has_adapters(policy) and trained_before and steps > 0:
            policy.adapters_merged = True
            if not (checkpoint and stage_index == checkpoint["stage_index"]):  # (a resumed stage has its own)
                # Earlier stages' adapters go into the base, fresh ones train this stage: "adapters off"
                # is then this stage's starting model, the reference its KL and preference terms need.
                restart_adapters(policy, cfg.peft)
                policy.model = accelerator.prepare_model(policy.model)
        params = [p for p in policy.model.parameters() if p.requires_grad]
        network = getattr(policy.model, "module", policy.model)  # unwrapped from DDP
        critic = {id(p) for p in getattr(network, "value_head", torch.nn.Module()).parameters()}
        groups = [{"params": [p for p in params if id(p) not in critic]},
                  {"params": [p for p in params if id(p) in critic], "lr": stage.value_lr or stage.lr}]
        optimizer = accelerator.prepare_optimizer(adamw([g for g in groups if g["params"]], stage))
        scheduler = build_scheduler(optimizer, stage, steps * updates_per_step(stage))
        if hasattr(policy, "max_new_tokens"):
            policy.max_new_tokens = stage.max_new_tokens
        reference = None
        if needs_reference(stage):  # frozen start-of-stage model, only when a term reads it
            if has_adapters(policy) and stage.kind != "spin":
                reference = AdapterDisabledReference(policy)  # the base itself: no second copy
            else:
                reference = copy.deepcopy(policy)
                reference.model.requires_grad_(False).eval()
        if stage.demo_data and stage.demo_data not in rows:
            rows[stage.demo_data] = task.rows(stage.demo_data)
        ctx = StageContext(stage, policy, reference, train_rows, rewards, weights, accelerator, optimizer,
                           scheduler, params, steps=steps, demo_rows=rows.get(stage.demo_data),
                           max_nonfinite_steps=cfg.max_nonfinite_steps, seed=cfg.seed, stage_index=stage_index,
                           refine=getattr(task, "refine", None))
        start = 0
        if checkpoint and stage_index == checkpoint["stage_index"]:
            optimizer.load_state_dict(checkpoint["optimizer"])
            scheduler.load_state_dict(checkpoint["scheduler"])
            if checkpoint.get("reference") is not None and own_copy(reference):
                reference.model.load_state_dict(checkpoint["reference"])
            ctx.state = checkpoint.get("stage_state") or {}
            set_rng_state(checkpoint["rng"])
            start = checkpoint["step"]
        policy.model.train()
        bar = tqdm(range(start, steps), desc=f"[{stage.name}:{stage.kind}]", initial=start, total=steps, unit="step")

        def checkpoint_now(step: int) -> None:
            if not accelerator.is_main_process:
                return
            save_checkpoint(run_dir, stage_index, step, {
                "model": checkpoint_state(policy.model), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "stage_state": ctx.state,
                "reference": reference.model.state_dict() if own_copy(reference) else None,
            }, keep=cfg.keep_checkpoints)

        for step in bar:
            started = time.perf_counter()
            ctx.step = step
            drawn = stage.batch_size * (stage.select_pool if stage.select else 1)  # a selection hook picks from more
            with global_token_mean():  # this process's slice of the step; token means over all processes
                metrics = STEPS[stage.kind](ctx, shard(batch_indices(cfg.seed, stage_index, step, drawn, len(train_rows))))
            seconds = time.perf_counter() - started
            unit = "tokens" if "tokens" in metrics else "samples"
            metrics.update({"lr": scheduler.get_last_lr()[0], "seconds": seconds,
                            f"{unit}_per_s": metrics.get(unit, 0.0) / seconds})
            if ctx.state.get("nonfinite_total"):
                metrics["skipped/nonfinite_updates"] = float(ctx.state["nonfinite_total"])
            metrics = mean_over_processes(metrics)
            log.log({"stage": stage.name, "stage_index": stage_index, "step": step + 1, **metrics})
            if cfg.trackers:  # one step axis across stages
                accelerator.log(scalars(metrics), step=sum(stage_steps(s, cfg.max_steps) for s in cfg.stages[:stage_index]) + step + 1)
            shown = {k: metrics[k] for k in SHOWN if k in metrics}
            bar.set_postfix({k.split("/")[-1] if k != "reward/total/mean" else "reward": f"{v:.3f}"
                             for k, v in shown.items()})
            done = step + 1
            if interrupted["flag"] or done % cfg.checkpoint_every == 0 or done == steps:
                checkpoint_now(done)
            if interrupted["flag"]:
                bar.close()
                print(f"\ninterrupted: checkpoint saved; continue with `mmpost train --resume {run_dir}`")
                raise KeyboardInterrupt
        bar.close()
        checkpoint = None
        if reference is not None and stage.kind != "spin":  # how far this stage moved the model (held out)
            results.setdefault("kl_to_start", {})[stage.name] = heldout_kl(policy, reference, eval_rows, cfg.eval)
            _save_results(run_dir, results)
        if stage_index < len(cfg.stages) - 1 and f"after_{stage.name}" not in results:
            key = f"after_{stage.name}"  # per-stage evaluation: e.g. SFT vs SFT+RL on the same charts
            results[key] = evaluate(policy, eval_rows, eval_rewards, weights, cfg.eval, task.metric, breakdown)
            _save_results(run_dir, results, key)
            policy.model.train()

    if previous_handler is not None:
        signal.signal(signal.SIGINT, previous_handler)
    results["after"] = evaluate(policy, eval_rows, eval_rewards, weights, cfg.eval, task.metric, breakdown)
    _save_results(run_dir, results, "after")
    if cfg.trackers:
        accelerator.log({f"heldout/{mode}/{key}": value for mode in ("greedy", "sampled")
                         for key, value in results["after"].get(mode, {}).items() if value is not None})
    if accelerator.is_main_process:
        policy.save(run_dir / "final")
        write_model_card(run_dir, cfg, results)
        print_table(results)
        print(f"run directory: {run_dir}")
    accelerator.wait_for_everyone()
    if cfg.trackers:
        accelerator.end_training()  # closes the trackers (and, in a data-parallel run, the process group): last
    return results
