"""The ``sft`` stage and the demonstration term every stage shares (``mixed``, ``rft``, ReLIFT)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mmpost.algos.kl import entropy, full_forward_kl
from mmpost.algos.pg import aggregate
from mmpost.algos.sft import (fait_weights, ift_loss, mean_loglik, nll_loss, otr_loss, poft_loss, qtuning_mask,
                              sample_candidates, sstoken_mask, weighted_nll)
from mmpost.distributed import token_count
from mmpost.policy import TokenDemos, eval_mode
from mmpost.registry import check_choice
from mmpost.stages.context import StageContext
from mmpost.types import StageSection

SFT_WEIGHTS = ("uniform", "dft", "chord", "sstoken", "poft", "fait", "ift", "otr", "qtuning")


@dataclass
class DemoLoss(StageSection):
    """The supervised term on demonstrations (``sft.demo_loss.weight=dft``), in every stage that trains on them."""

    # token weights "uniform" | "dft" | "chord"; or "sstoken" | "poft" | "fait" | "ift" | "otr" | "qtuning"
    weight: str = "uniform"
    kl_coef: float = 0.0  # forward KL(start model || policy) on demonstrations, full vocabulary (Anchored SFT)
    sstoken_ratio: float = 0.6  # sstoken: fraction of each demonstration's tokens trained on
    sstoken_gamma: float = 0.5  # sstoken: weight of the excess loss vs the attention-on-prompt score (1 = loss only)
    qtuning_sample_keep: float = 0.25  # qtuning: share of each batch's samples kept (quadrant thresholds bisected to it)
    qtuning_token_keep: float = 0.7  # qtuning: share of tokens kept in confident-misconception samples
    qtuning_neighbour_weight: float = 0.5  # qtuning: lambda, the neighbours' share of a token's salience
    # poft: directories of aligned models whose mean-token log-likelihood of each demonstration (under
    # their own tokenizers, averaged) is the reference; [] = the start-of-stage model, with which
    # PoFT begins as a rescaled NLL (the paper's references are other, aligned LLMs)
    poft_reference: list = field(default_factory=list)
    otr_candidates: int = 256  # otr: tokens sampled per demonstrated position (the paper's K)
    otr_temperature: float = 1.2  # otr: sampling temperature (> 1 in the paper, its value unread)
    otr_miss_reward: float = -0.1  # otr: reward of a sampled token that is not the demonstrated one (beta)
    ift_lambda: float = 0.2  # ift: share of the predicted token in each input embedding
    ift_gamma: float = 0.95  # ift: discount of future losses in a token's weight
    fait_alpha: float = 1.0  # fait: extra weight on gold tokens where the model's wrong answer differs
    fait_line_alpha: float = 0.5  # fait: extra weight on every token of a gold line the wrong answer changed

    def __post_init__(self):
        check_choice("demo_loss.weight", self.weight, SFT_WEIGHTS)

    def needs_reference(self, stage) -> bool:
        reads_start_model = self.weight == "sstoken" or (self.weight == "poft" and not self.poft_reference) \
            or self.kl_coef > 0
        return reads_start_model and stage.trains_on_demos()

    def requires(self, stage) -> list[tuple[type, str]]:
        token_terms = self.weight != "uniform" or self.kl_coef
        return [(TokenDemos, f"demo_loss.weight={self.weight!r} / demo_loss.kl_coef")] if token_terms else []


def demo_loss(ctx: StageContext, batch: list[dict]) -> tuple[torch.Tensor, dict[str, float]]:
    """The supervised loss on ``batch``'s demonstrations under ``ctx.stage.demo_loss``.

    Uniform weights and no KL: the policy's own ``sft_loss`` (token NLL, flow matching or denoising,
    so any policy kind). Otherwise, on the demonstrations' token log-probs (token policies), by
    ``weight``: IFT (its own blended forward), One-Token Rollout, Q-Tuning, FAIT, ssToken's selection,
    PoFT's preference over the reference, or a token-weight function (DFT, CHORD-phi); plus Anchored
    SFT's full-vocabulary KL to the reference when ``kl_coef`` > 0. Token means are over all
    processes' tokens (:func:`~mmpost.distributed.token_count`).
    """
    terms, policy = ctx.stage.demo_loss, ctx.policy
    if terms.weight == "uniform" and not terms.kl_coef:
        return policy.sft_loss(batch)
    if terms.weight == "ift":  # its own forward: inputs blend gold and predicted tokens
        logprobs, mask = policy.ift_demo_logprobs(batch, terms.ift_lambda)
        return ift_loss(logprobs, mask, terms.ift_gamma), {"tokens": float(mask.sum())}
    with_logits = terms.kl_coef > 0 or terms.weight in ("otr", "qtuning")
    out = policy.demo_logprobs(batch, return_logits=with_logits) if with_logits else policy.demo_logprobs(batch)
    logprobs, mask = out[0], out[1]
    metrics = {"tokens": float(mask.sum())}
    if terms.weight == "otr":
        log_probs = torch.log_softmax(out[2], dim=-1)
        candidates = sample_candidates(out[2], terms.otr_candidates, terms.otr_temperature)
        gold = policy.demo_tokens(batch)[0].to(log_probs.device)
        loss = otr_loss(log_probs, candidates, gold, mask, terms.otr_miss_reward, token_count(mask))
        metrics["otr/hit_rate"] = float((candidates == gold.unsqueeze(-1)).float().mean(-1)[mask.bool()].mean())
    elif terms.weight == "qtuning":
        keep = qtuning_mask(logprobs, entropy(out[2].detach()), mask, terms.qtuning_sample_keep,
                            terms.qtuning_token_keep, terms.qtuning_neighbour_weight)
        loss = nll_loss(logprobs, keep, tokens=token_count(keep))
        metrics["sft/kept_tokens"] = float(keep.sum())
    elif terms.weight == "fait":
        weights = _fait_weights(ctx, batch, mask)
        loss = aggregate(-weights * logprobs, mask, "token_mean", tokens=token_count(mask))
        metrics["fait/upweighted"] = float(((weights > 1) * mask).sum() / mask.sum().clamp(min=1))
    elif terms.weight == "sstoken":
        with torch.no_grad():
            ref_logprobs = ctx.reference.demo_logprobs(batch)[0]
        attention = policy.demo_prompt_attention(batch) if terms.sstoken_gamma < 1 else None
        keep = sstoken_mask(logprobs, ref_logprobs, mask, terms.sstoken_ratio, attention, terms.sstoken_gamma)
        loss = nll_loss(logprobs, keep, tokens=token_count(keep))
        metrics["sft/kept_tokens"] = float(keep.sum())
    elif terms.weight == "poft":
        loss = poft_loss(logprobs, None, mask, _poft_reference_scores(ctx, batch))
    else:
        loss = weighted_nll(logprobs, mask, terms.weight, tokens=token_count(mask))
    metrics["sft/nll"] = float(nll_loss(logprobs.detach(), mask))
    if terms.kl_coef:
        with torch.no_grad():
            ref_logits = ctx.reference.demo_logprobs(batch, return_logits=True)[2]
        kl = aggregate(full_forward_kl(out[2], ref_logits), mask, "token_mean", tokens=token_count(mask))
        loss = loss + terms.kl_coef * kl
        metrics["kl/demo"] = kl.item()
    return loss, metrics


@torch.no_grad()
def _poft_reference_scores(ctx: StageContext, batch: list[dict]) -> torch.Tensor:
    """[B] PoFT's reference score of each demonstration: the mean over ``demo_loss.poft_reference``
    models (loaded once per stage, frozen) of their mean-token log-likelihood, or the start-of-stage
    model's."""
    paths = ctx.stage.demo_loss.poft_reference
    if not paths:
        return mean_loglik(*ctx.reference.demo_logprobs(batch))
    for path in paths:
        if path not in ctx.models:
            model = type(ctx.policy).from_pretrained(path, device=ctx.policy.device)
            model.model.requires_grad_(False).eval()
            ctx.models[path] = model
    return torch.stack([mean_loglik(*ctx.models[path].demo_logprobs(batch)).cpu() for path in paths]).mean(0)


def _fait_weights(ctx: StageContext, batch: list[dict], mask: torch.Tensor) -> torch.Tensor:
    """FAIT: the policy's own greedy answer is the faulty solution where it scores below
    ``solved_threshold``; the gold lines it changes and the tokens it gets wrong in them are up-weighted
    (``demo_loss.fait_line_alpha``, ``demo_loss.fait_alpha``)."""
    from mmpost.rewarding import score_rollout

    attempt = ctx.policy.rollout(batch, 1, greedy=True)
    score_rollout(attempt, ctx.rewards, ctx.weights)
    wrong = torch.nan_to_num(attempt.rewards, nan=float("-inf")) < ctx.stage.solved_threshold
    gold, gold_mask = ctx.policy.demo_tokens(batch)
    faulty = attempt.actions.completion_ids.cpu()
    terms = ctx.stage.demo_loss
    weights = fait_weights(gold, gold_mask, ctx.policy.token_lines(gold), faulty, attempt.mask,
                           ctx.policy.token_lines(faulty), terms.fait_alpha, terms.fait_line_alpha)
    weights[~wrong] = 1.0  # a right answer's differences are not errors
    return weights.to(mask.device)


def sft_step(ctx: StageContext, indices: list[int]) -> dict[str, float]:
    """One optimiser step on the demonstrations of ``indices`` (chosen from a larger pool by UDS when
    the stage selects; after a Middo round, of the refined rows)."""
    selected = {}
    if ctx.stage.rows.middo and ctx.step and ctx.step % ctx.stage.rows.middo[0] == 0:
        selected.update(_middo_round(ctx))
    if ctx.stage.rows.select == "uds":
        indices, chosen = _uds(ctx, indices)
        selected.update(chosen)
    with ctx.accelerator.autocast():
        loss, metrics = demo_loss(ctx, ctx.batch(indices))
    return {"grad_norm": ctx.update(loss), "loss/sft": loss.item(), **metrics, **selected}


def _uds(ctx: StageContext, pool: list[int]) -> tuple[list[int], dict[str, float]]:
    from mmpost.data_hooks.selection import uds_select

    with torch.no_grad():
        _, mask, logits = ctx.policy.demo_logprobs(ctx.batch(pool), return_logits=True)
    chosen, ctx.state["uds_queue"] = uds_select(logits, mask, ctx.stage.batch_size, ctx.state.get("uds_queue"))
    return [pool[i] for i in chosen], {"select/pool": float(len(pool)), "select/queue": float(len(ctx.state["uds_queue"]))}


@torch.no_grad()
def _middo_round(ctx: StageContext) -> dict[str, float]:
    """One Middo round over the stage's current rows (:mod:`mmpost.data_hooks.refinement`): loss under the
    start-of-stage and the current model, prompt embeddings, and the task's reward on each row's own
    demonstration; the flagged rows are rewritten and the result becomes the stage's data (kept in
    the checkpointed stage state)."""
    from mmpost.data_hooks.refinement import complexity_flags, low_quality_flags, refined_dataset, sparse_flags
    from mmpost.rewarding import score_rollout

    policy, m = ctx.policy, ctx.stage.rows.middo[1]
    current = ctx.state.get("refined_rows") or list(range(len(ctx.rows)))
    rows = ctx.batch(list(range(len(current))))
    loss_start, loss_now, embeddings, quality = [], [], [], []
    with eval_mode(policy.model):
        for start in range(0, len(rows), ctx.stage.batch_size):
            chunk = rows[start:start + ctx.stage.batch_size]
            for model, out in ((ctx.reference, loss_start), (policy, loss_now)):
                logprobs, mask = model.demo_logprobs(chunk)
                out.append((-(logprobs * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu())
            embeddings.append(policy.prompt_embeddings(chunk).cpu())
            demos = policy.demo_rollout(chunk)
            score_rollout(demos, ctx.rewards, ctx.weights)
            quality.append(torch.nan_to_num(demos.rewards.float(), nan=0.0))
    sparse, _ = sparse_flags(torch.cat(embeddings), m)
    flags = {"complexity": complexity_flags(torch.cat(loss_start), torch.cat(loss_now)), "diversity": sparse,
             "quality": low_quality_flags(torch.cat(quality), m)}
    order, counts = refined_dataset(rows, flags, ctx.refine, seed=f"{ctx.seed}:{ctx.stage_index}:{ctx.step}")
    ctx.state["refined_rows"] = [current[e] if isinstance(e, int) else e for e in order]
    return {**{f"middo/{axis}": float(f.sum()) for axis, f in flags.items()},
            **{f"middo/{what}": float(n) for what, n in counts.items()}}
