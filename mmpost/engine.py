"""The trainer: one loop, read top to bottom.

``train(cfg)`` builds the task, policy and rewards, evaluates the untrained policy on the
held-out split, runs each stage of the recipe, evaluates again and writes the run directory:

    config.yaml      resolved config            metrics.jsonl   one JSON object per step
    checkpoints/     atomic, resumable          samples/        held-out samples before/after
    final/           from_pretrained-loadable   results.json    before/after metrics

Each stage is ``sft`` (the policy's supervised loss on demonstrations) or ``rl`` (sample a group
per prompt or initial state, score, advantages -- group-normalised, or GAE with the policy's value
head --, clipped policy gradient, optional KL and critic terms). The engine speaks only the
:class:`~mmpost.policy.Policy` contract and :class:`~mmpost.types.Rollout`, so token, flow and
diffusion policies share it.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import signal
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from mmpost.algos.advantages import gae, group_advantages, group_keep_mask, normalize
from mmpost.algos.kl import kl_k3, sequence_kl
from mmpost.algos.pg import aggregate, clipped_pg_loss
from mmpost.algos.value import value_loss
from mmpost.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint, set_rng_state
from mmpost.config import Stage, TrainConfig
from mmpost.curation import lowest_reward_rows
from mmpost.evaluation import evaluate, heldout_kl, print_table, save_samples
from mmpost.registry import REWARDS, TASKS
from mmpost.rewarding import score_rollout


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
    """``metrics.jsonl``: one line per step, flushed, truncated back to the checkpoint on resume."""

    def __init__(self, path: Path, keep_until: tuple[int, int]):
        self.path = path
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
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()


def resolve_rewards(cfg: TrainConfig, task) -> tuple[dict, dict]:
    names = cfg.rewards or list(task.rewards)
    if not names:
        raise ValueError("no reward functions: set `rewards` or use a task with default rewards")
    weights = cfg.reward_weights or [1.0] * len(names)
    return {n: REWARDS.get(n) for n in names}, dict(zip(names, weights))


def compute_advantages(rollout, stage: Stage) -> dict[str, float]:
    """Set ``rollout.advantages`` (and ``returns`` for GAE); drop filtered groups from the mask."""
    metrics = {}
    if stage.advantage == "group":
        rollout.advantages = group_advantages(rollout.rewards, rollout.group, scale=stage.scale_rewards)
        if stage.kl_coef > 0 and stage.kl_in == "advantage":  # Carve3D: A = z(r) - beta * z(KL), per prompt
            kl = sequence_kl(rollout.logprobs, rollout.ref_logprobs, rollout.mask)
            rollout.advantages = rollout.advantages - stage.kl_coef * group_advantages(kl, rollout.group)
    else:
        if rollout.values is None or rollout.step_rewards is None:
            raise ValueError(f"stage {stage.name!r}: advantage 'gae' needs a policy with a value head acting "
                             "in an environment (per-transition rewards and values)")
        bootstrap = rollout.bootstrap if stage.bootstrap_truncated else torch.zeros_like(rollout.bootstrap)
        advantages, rollout.returns = gae(rollout.step_rewards, rollout.values, rollout.alive, bootstrap,
                                          stage.gamma, stage.lam)
        if stage.normalize_advantages:
            advantages = normalize(advantages, rollout.alive)
        # the action steps of a transition are contiguous: one advantage per transition, repeated
        rollout.advantages = advantages.repeat_interleave(rollout.mask.shape[1] // advantages.shape[1], dim=1)
        metrics["value/mean"] = float((rollout.values * rollout.alive).sum() / rollout.alive.sum().clamp(min=1))
    if stage.group_filter:
        keep = group_keep_mask(rollout.rewards, rollout.group, *stage.group_filter)
        rollout.mask = rollout.mask * keep[:, None].to(rollout.mask.dtype)
        metrics["rl/kept_fraction"] = float(keep.float().mean())
    return metrics


def _default_output_dir(cfg: TrainConfig) -> Path:
    return Path("runs") / f"{cfg.task}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def train(cfg: TrainConfig, resume: str | Path | None = None) -> dict:
    """Run ``cfg`` (or continue the run in ``resume``); return the final metrics."""
    from accelerate import Accelerator

    torch.set_num_threads(cfg.threads)
    run_dir = Path(resume or cfg.output_dir or _default_output_dir(cfg))
    checkpoint = None
    if resume:
        found = list_checkpoints(run_dir)
        checkpoint = load_checkpoint(found[-1]) if found else None
    if not resume and list_checkpoints(run_dir):
        raise FileExistsError(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                              "or choose another --output-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(run_dir, os.W_OK):
        raise PermissionError(f"output directory {run_dir} is not writable")
    cfg.output_dir = str(run_dir)
    cfg.save(run_dir / "config.yaml")
    torch.manual_seed(cfg.seed)

    task_cls = TASKS.get(cfg.task)
    rewards, weights = resolve_rewards(cfg, task_cls)
    # Held-out evaluation always reports the task's metric (and its checks, e.g. that generated images
    # still show the object), whatever rewards drive training.
    eval_rewards = {name: REWARDS.get(name) for name in (task_cls.metric, *getattr(task_cls, "eval_rewards", ()))}
    eval_rewards.update(rewards)
    for fn in eval_rewards.values():
        if hasattr(fn, "workers"):  # rewards backed by a sandbox pool
            fn.workers = cfg.sandbox_workers
    task = task_cls(cfg, reward=eval_rewards[task_cls.metric])
    rows = {"heldout": task.rows("heldout")}  # row splits by name, loaded when a stage first needs them
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=cfg.mixed_precision)
    policy = task.policy(device=accelerator.device)
    with contextlib.closing(policy):  # simulators and worker processes go away even on errors
        return _train_stages(cfg, run_dir, checkpoint, task, policy, rows, rewards, weights, eval_rewards,
                             accelerator)


def _train_stages(cfg, run_dir, checkpoint, task, policy, rows, rewards, weights, eval_rewards, accelerator):
    """Evaluate, run every stage (resuming at ``checkpoint``), evaluate again, save."""
    from tqdm.auto import tqdm

    eval_rows = rows["heldout"]
    policy.model = accelerator.prepare_model(policy.model)
    if checkpoint is not None:
        policy.model.load_state_dict(checkpoint["model"])

    results = json.loads((run_dir / "results.json").read_text()) if checkpoint else {}
    if "before" not in results:
        results["before"] = evaluate(policy, eval_rows, eval_rewards, weights, cfg.eval, task.metric)
        save_samples(run_dir / "samples" / "before", results["before"].pop("samples"))
        (run_dir / "results.json").write_text(json.dumps(results, indent=1))

    interrupted = {"flag": False}
    previous_handler = None
    if threading.current_thread() is threading.main_thread():  # Ctrl-C: checkpoint, then exit cleanly
        previous_handler = signal.signal(signal.SIGINT, lambda *_: interrupted.update(flag=True))
    # Lines after the checkpoint being resumed (or all lines, when starting over) are dropped.
    log = RunLog(run_dir / "metrics.jsonl",
                 keep_until=(checkpoint["stage_index"], checkpoint["step"]) if checkpoint else (-1, -1))
    for stage_index, stage in enumerate(cfg.stages):
        if checkpoint and stage_index < checkpoint["stage_index"]:
            continue
        steps = min(stage.steps, cfg.max_steps) if cfg.max_steps else stage.steps
        updates_per_step = stage.epochs * stage.minibatches if stage.kind == "rl" else 1
        if stage.data not in rows:
            rows[stage.data] = task.rows(stage.data)
        train_rows = rows[stage.data]
        if stage.kind == "rl" and stage.curate:
            train_rows = lowest_reward_rows(policy, train_rows, rewards, weights, *stage.curate, stage.group_size,
                                            stage.batch_size, run_dir / f"curated-{stage.name}.json")
        params = [p for p in policy.model.parameters() if p.requires_grad]
        network = getattr(policy.model, "module", policy.model)  # unwrapped from DDP
        critic = {id(p) for p in getattr(network, "value_head", torch.nn.Module()).parameters()}
        groups = [{"params": [p for p in params if id(p) not in critic]},
                  {"params": [p for p in params if id(p) in critic], "lr": stage.value_lr or stage.lr}]
        optimizer = accelerator.prepare_optimizer(
            torch.optim.AdamW([g for g in groups if g["params"]], lr=stage.lr, weight_decay=stage.weight_decay))
        scheduler = build_scheduler(optimizer, stage, steps * updates_per_step)
        reference = None
        # Gaussian policies give log-probs and the exact KL to the reference from one forward
        closed_form = stage.kind == "rl" and stage.kl_coef > 0 and stage.kl_in == "loss" \
            and stage.kl_estimator == "closed_form"
        if stage.kind == "rl" and stage.kl_estimator == "closed_form" and not hasattr(policy, "logprobs_and_kl"):
            raise ValueError(f"stage {stage.name!r}: kl_estimator 'closed_form' needs a policy with Gaussian "
                             f"transitions (logprobs_and_kl); {type(policy).__name__} has none: use 'k3'")
        if stage.kind == "rl" and stage.kl_coef > 0:  # frozen start-of-stage model, only when KL is on
            reference = copy.deepcopy(policy)
            reference.model.requires_grad_(False).eval()
        start = 0
        if checkpoint and stage_index == checkpoint["stage_index"]:
            optimizer.load_state_dict(checkpoint["optimizer"])
            scheduler.load_state_dict(checkpoint["scheduler"])
            if checkpoint.get("reference") is not None:
                reference.model.load_state_dict(checkpoint["reference"])
            set_rng_state(checkpoint["rng"])
            start = checkpoint["step"]
        if hasattr(policy, "max_new_tokens"):
            policy.max_new_tokens = stage.max_new_tokens
        policy.model.train()
        bar = tqdm(range(start, steps), desc=f"[{stage.name}:{stage.kind}]", initial=start, total=steps, unit="step")

        def update(loss: torch.Tensor) -> float:
            """One optimiser step on ``loss``; returns the gradient norm before clipping. A
            non-finite loss or gradient skips the step (NaN is logged) rather than poisoning the weights."""
            grad_norm = math.nan
            if torch.isfinite(loss):
                accelerator.backward(loss)
                grad_norm = float(accelerator.clip_grad_norm_(params, stage.max_grad_norm))
            if math.isfinite(grad_norm):
                optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            return grad_norm

        def checkpoint_now(step: int) -> None:
            save_checkpoint(run_dir, stage_index, step, {
                "model": policy.model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "reference": reference.model.state_dict() if reference is not None else None,
            }, keep=cfg.keep_checkpoints)

        for step in bar:
            started = time.perf_counter()
            batch = [train_rows[i] for i in batch_indices(cfg.seed, stage_index, step, stage.batch_size, len(train_rows))]
            metrics: dict[str, float] = {}
            if stage.kind == "sft":
                with accelerator.autocast():
                    loss, sft_metrics = policy.sft_loss(batch)
                metrics.update({"grad_norm": update(loss), "loss/sft": loss.item(), **sft_metrics})
            else:
                rollout = policy.rollout(batch, stage.group_size, temperature=stage.temperature)
                generated = time.perf_counter()
                metrics.update(score_rollout(rollout, rewards, weights))
                scored = time.perf_counter()
                if reference is not None:
                    with torch.no_grad():
                        rollout.ref_logprobs = reference.logprobs(rollout).cpu()
                    metrics["kl/sampled"] = float(sequence_kl(rollout.logprobs, rollout.ref_logprobs,
                                                              rollout.mask).mean())
                metrics.update(compute_advantages(rollout, stage))
                for _ in range(stage.epochs):
                    order = torch.randperm(len(rollout))
                    for index in order.chunk(stage.minibatches):
                        part = rollout.subset(index)
                        with accelerator.autocast():
                            if closed_form:
                                logprobs, step_kl = policy.logprobs_and_kl(part, reference)
                            else:
                                logprobs = policy.logprobs(part)
                            mask = part.mask.to(logprobs.device)
                            loss, pg_metrics = clipped_pg_loss(
                                logprobs, part.logprobs.to(logprobs.device), part.advantages.to(logprobs.device),
                                mask, stage.clip_low, stage.clip_high, stage.aggregation, stage.dual_clip)
                            metrics["loss/pg"] = loss.item()
                            if stage.advantage == "gae":
                                critic_loss = value_loss(policy.values(part), part.values.to(logprobs.device),
                                                         part.returns.to(logprobs.device),
                                                         part.alive.to(logprobs.device), stage.value_clip)
                                loss = loss + stage.value_coef * critic_loss
                                metrics["loss/value"] = critic_loss.item()
                            if reference is not None and stage.kl_in == "loss":
                                if not closed_form:
                                    step_kl = kl_k3(logprobs, part.ref_logprobs.to(logprobs.device))
                                kl = aggregate(step_kl, mask, stage.aggregation)
                                loss = loss + stage.kl_coef * kl
                                metrics["kl"] = kl.item()
                        metrics.update({"grad_norm": update(loss), **pg_metrics})
                metrics.update({
                    **rollout.metrics, "time/update": time.perf_counter() - scored,
                    "loss/total": loss.item(), "tokens": float(rollout.mask.sum()),
                    # -mean log p of sampled tokens: an unbiased estimate of the policy's entropy
                    "entropy": float(-(rollout.logprobs * rollout.mask).sum() / rollout.mask.sum().clamp(min=1)),
                    "rollout/len": float(rollout.num_steps.float().mean()),
                    "time/generate": generated - started, "time/reward": scored - generated,
                })
            seconds = time.perf_counter() - started
            unit = "tokens" if "tokens" in metrics else "samples"
            metrics.update({"lr": scheduler.get_last_lr()[0], "seconds": seconds,
                            f"{unit}_per_s": metrics.get(unit, 0.0) / seconds})
            log.log({"stage": stage.name, "stage_index": stage_index, "step": step + 1, **metrics})
            shown = {k: metrics[k] for k in ("loss/sft", "loss/pg", "loss/value", "reward/total/mean") if k in metrics}
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
        if reference is not None:  # how far this stage moved the model, on held-out prompts
            results.setdefault("kl_to_start", {})[stage.name] = heldout_kl(policy, reference, eval_rows, cfg.eval)
            (run_dir / "results.json").write_text(json.dumps(results, indent=1))
        if stage_index < len(cfg.stages) - 1 and f"after_{stage.name}" not in results:
            key = f"after_{stage.name}"  # per-stage evaluation: e.g. SFT vs SFT+RL on the same charts
            results[key] = evaluate(policy, eval_rows, eval_rewards, weights, cfg.eval, task.metric)
            save_samples(run_dir / "samples" / key, results[key].pop("samples"))
            (run_dir / "results.json").write_text(json.dumps(results, indent=1))
            policy.model.train()

    if previous_handler is not None:
        signal.signal(signal.SIGINT, previous_handler)
    results["after"] = evaluate(policy, eval_rows, eval_rewards, weights, cfg.eval, task.metric)
    save_samples(run_dir / "samples" / "after", results["after"].pop("samples"))
    (run_dir / "results.json").write_text(json.dumps(results, indent=1))
    policy.save(run_dir / "final")
    print_table(results)
    print(f"run directory: {run_dir}")
    return results
