"""The ``rft`` stage: rejection-sampling fine-tuning (SuperHF, FARE; S3FT with the demonstration fallback).

Sample ``sampling.group_size`` outputs per prompt, keep those whose reward reaches ``solved_threshold``
(at most the ``rejection.top_k`` best per prompt; with ``rejection.require_solved=false`` the top_k of
every prompt, as SuperHF's best-of-n), and fine-tune on them with the stage's token weighting,
plus an optional KL to the start-of-stage model on the kept tokens (SuperHF's prior). With
``rejection.demo_fallback`` a prompt with no kept sample trains on its demonstration instead (S3FT: the
model's own answer when it is judged right, else the gold one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmpost.algos.kl import per_step_kl
from mmpost.algos.pg import aggregate
from mmpost.algos.sft import weighted_nll
from mmpost.distributed import token_count
from mmpost.policy import TokenDemos
from mmpost.rewarding import score_rollout
from mmpost.stages.context import StageContext
from mmpost.stages.sft import demo_loss
from mmpost.types import StageSection


@dataclass
class Rejection(StageSection):
    """Rejection sampling in ``rft`` stages (``rft.rejection.top_k=1``)."""

    top_k: int = 0  # keep at most the k best solved samples per prompt (0 = all solved)
    demo_fallback: bool = False  # prompts with no solved sample train on the demonstration (S3FT)
    # False: keep the top_k by reward of every prompt, solved or not (SuperHF's best-of-n, its KL prior
    # keeping it close to the start model); True: only samples reaching solved_threshold (FARE, S3FT)
    require_solved: bool = True

    def __post_init__(self):
        if self.top_k < 0:
            raise ValueError(f"rejection.top_k must be >= 0, got {self.top_k}")
        if not self.require_solved and not self.top_k:
            raise ValueError("rejection.require_solved=false keeps the best samples of every prompt: set rejection.top_k")

    def requires(self, stage) -> list[tuple[type, str]]:
        return [(TokenDemos, "stage kind 'rft'")] if stage.kind == "rft" else []


def kept_outputs(rewards: torch.Tensor, group: torch.Tensor, threshold: float, top_k: int,
                 require_solved: bool = True) -> torch.Tensor:
    """[N] bool: outputs with reward >= ``threshold`` (every scored output when not ``require_solved``),
    at most the ``top_k`` best of each group (0 = all). Unscorable (NaN) outputs are never kept."""
    scored = ~torch.isnan(rewards)
    rewards = torch.nan_to_num(rewards, nan=float("-inf"))
    keep = rewards >= threshold if require_solved else scored
    if top_k:
        for g in torch.unique(group):
            members = ((group == g) & keep).nonzero().squeeze(1)
            if members.numel() > top_k:
                ranked = members[torch.argsort(rewards[members], descending=True, stable=True)]
                keep[ranked[top_k:]] = False
    return keep


def rft_step(ctx: StageContext, indices: list[int]) -> dict[str, float]:
    stage, policy = ctx.stage, ctx.policy
    batch = ctx.batch(indices)
    rollout = policy.rollout(batch, stage.sampling.group_size, temperature=stage.sampling.temperature)
    metrics = score_rollout(rollout, ctx.rewards, ctx.weights)
    keep = kept_outputs(rollout.rewards, rollout.group, stage.solved_threshold, stage.rejection.top_k,
                        stage.rejection.require_solved)
    metrics["rft/kept_fraction"] = float(keep.float().mean())
    terms, counts = [], []
    with ctx.accelerator.autocast():
        if keep.any():
            kept = rollout.subset(keep.nonzero().squeeze(1))
            kept.temperature = 1.0  # fine-tune on the answers' likelihood
            logprobs = policy.logprobs(kept)
            mask = kept.mask.to(logprobs.device)
            weighting = stage.demo_loss.weight if stage.demo_loss.weight in ("uniform", "dft", "chord") else "uniform"
            loss = weighted_nll(logprobs, mask, weighting, tokens=token_count(mask))
            if stage.kl.coef > 0:
                with torch.no_grad():
                    ref = ctx.reference.logprobs(kept).to(logprobs.device)
                kl = aggregate(per_step_kl(logprobs, ref, stage.kl.estimator), mask, "token_mean",
                               tokens=token_count(mask))
                loss = loss + stage.kl.coef * kl
                metrics["kl"] = kl.item()
            terms.append(loss)
            counts.append(len(kept))
        solved = {int(g) for g in rollout.group[keep].tolist()}
        unsolved = [row for g, row in enumerate(indices) if g not in solved]
        if stage.rejection.demo_fallback and unsolved:
            loss, _ = demo_loss(ctx, ctx.batch(unsolved))
            terms.append(loss)
            counts.append(len(unsolved))
        metrics["rft/demo_fallback"] = float(len(unsolved) if stage.rejection.demo_fallback else 0)
    if not terms:
        return {**metrics, "grad_norm": ctx.update(None)}
    total = sum(c * t for c, t in zip(counts, terms)) / sum(counts)  # mean over trained samples
    return {**metrics, "loss/sft": total.item(), "grad_norm": ctx.update(total), "samples": float(sum(counts))}
