"""The ``rft`` stage: rejection-sampling fine-tuning (SuperHF, FARE; S3FT with the demonstration fallback).

Sample ``group_size`` outputs per prompt, keep those whose reward reaches ``solved_threshold`` (at most
the ``rft_top_k`` best per prompt), and fine-tune on them with the stage's token weighting, plus
an optional KL to the start-of-stage model on the kept tokens (SuperHF's prior). With
``rft_demo_fallback`` a prompt with no kept sample trains on its demonstration instead (S3FT: the
model's own answer when it is judged right, else the gold one).
"""

from __future__ import annotations

import torch

from mmpost.algos.kl import per_step_kl
from mmpost.algos.pg import aggregate
from mmpost.algos.sft import weighted_nll
from mmpost.rewarding import score_rollout
from mmpost.stages.context import StageContext
from mmpost.stages.sft import demo_loss


def kept_outputs(rewards: torch.Tensor, group: torch.Tensor, threshold: float, top_k: int) -> torch.Tensor:
    """[N] bool: outputs with reward >= ``threshold``, at most the ``top_k`` best of each group (0 = all)."""
    rewards = torch.nan_to_num(rewards, nan=float("-inf"))
    keep = rewards >= threshold
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
    rollout = policy.rollout(batch, stage.group_size, temperature=stage.temperature)
    metrics = score_rollout(rollout, ctx.rewards, ctx.weights)
    keep = kept_outputs(rollout.rewards, rollout.group, stage.solved_threshold, stage.rft_top_k)
    metrics["rft/kept_fraction"] = float(keep.float().mean())
    terms, counts = [], []
    with ctx.accelerator.autocast():
        if keep.any():
            kept = rollout.subset(keep.nonzero().squeeze(1))
            kept.temperature = 1.0  # fine-tune on the answers' likelihood
            logprobs = policy.logprobs(kept)
            mask = kept.mask.to(logprobs.device)
            weighting = stage.sft_weight if stage.sft_weight in ("uniform", "dft", "chord") else "uniform"
            loss = weighted_nll(logprobs, mask, weighting)
            if stage.kl_coef > 0:
                with torch.no_grad():
                    ref = ctx.reference.logprobs(kept).to(logprobs.device)
                kl = aggregate(per_step_kl(logprobs, ref, stage.kl_estimator), mask, "token_mean")
                loss = loss + stage.kl_coef * kl
                metrics["kl"] = kl.item()
            terms.append(loss)
            counts.append(len(kept))
        solved = {int(g) for g in rollout.group[keep].tolist()}
        unsolved = [row for g, row in enumerate(indices) if g not in solved]
        if stage.rft_demo_fallback and unsolved:
            loss, _ = demo_loss(ctx, ctx.batch(unsolved))
            terms.append(loss)
            counts.append(len(unsolved))
        metrics["rft/demo_fallback"] = float(len(unsolved) if stage.rft_demo_fallback else 0)
    if not terms:
        return {**metrics, "grad_norm": ctx.update(None)}
    total = sum(c * t for c, t in zip(counts, terms)) / sum(counts)  # mean over trained samples
    return {**metrics, "loss/sft": total.item(), "grad_norm": ctx.update(total), "samples": float(sum(counts))}
