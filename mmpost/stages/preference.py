"""The ``dpo`` and ``spin`` stages: a preference loss on (chosen, rejected) pairs against a frozen reference.

Pairs come from, in this order: the rows' own ``chosen`` / ``rejected`` columns (a preference
dataset); for ``spin``, the demonstration (chosen) against a sample of the previous iterate, which is
the reference and is refreshed every ``iteration_steps`` (SPIN, ``uclaml/SPIN``); otherwise
``group_size`` samples of the current policy per prompt, scored by the rewards, best against worst
(CheXalign's ``get_preference.py``, sampled online here rather than once before training).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch

from mmpost.algos import preference as losses
from mmpost.policy import TokenDemos
from mmpost.registry import check_choice
from mmpost.rewarding import score_rollout
from mmpost.stages.context import StageContext
from mmpost.types import Rollout, StageSection

log = logging.getLogger(__name__)

PREFERENCE_LOSSES = ("dpo", "robust", "ipo", "rdpo", "dpo_norm", "simpo", "orpo", "kto", "asft")
REFERENCE_FREE = ("simpo", "orpo", "asft")


@dataclass
class Preference(StageSection):
    """The preference loss of ``dpo`` and ``spin`` stages (``dpo.preference.beta=0.05``)."""

    loss: str = "dpo"  # dpo | robust | ipo | rdpo | dpo_norm | simpo | orpo | kto | asft
    beta: float = 0.1  # the preference losses' beta (SimPO: 2.5)
    label_smoothing: float = 0.0  # dpo: cDPO; robust: the flip rate
    rdpo_alpha: float = 0.05  # rdpo: weight of the length difference
    simpo_gamma: float = 1.375  # simpo: target margin
    orpo_lambda: float = 0.1  # orpo: weight of the odds-ratio term beside the NLL
    iteration_steps: int = 0  # spin: steps per self-play iteration (reference refreshed); 0 = one iteration

    def __post_init__(self):
        check_choice("preference.loss", self.loss, PREFERENCE_LOSSES)
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"preference.label_smoothing must be in [0, 0.5), got {self.label_smoothing}")

    def needs_reference(self, stage) -> bool:
        return stage.kind == "spin" or (stage.kind == "dpo" and self.loss not in REFERENCE_FREE)

    def requires(self, stage) -> list[tuple[type, str]]:
        return [(TokenDemos, f"stage kind {stage.kind!r}")] if stage.kind in ("dpo", "spin") else []


def make_pairs(ctx: StageContext, batch: list[dict]) -> tuple[Rollout | None, Rollout | None, dict]:
    """(chosen, rejected) as one-output-per-pair rollouts, and metrics; ``(None, None, m)`` when no
    prompt of the batch gave a pair (all samples scored the same)."""
    stage, policy = ctx.stage, ctx.policy
    if "chosen" in batch[0] and "rejected" in batch[0]:
        return policy.demo_rollout(batch, "chosen"), policy.demo_rollout(batch, "rejected"), {}
    if stage.kind == "spin":
        rejected = ctx.reference.rollout(batch, 1, temperature=stage.sampling.temperature)
        return policy.demo_rollout(batch, "completion"), rejected, {}
    samples = policy.rollout(batch, stage.sampling.group_size, temperature=stage.sampling.temperature)
    metrics = score_rollout(samples, ctx.rewards, ctx.weights)
    pairs = losses.best_worst_pairs(torch.nan_to_num(samples.rewards, nan=float("-inf")), samples.group)
    metrics["pairs"] = float(len(pairs))
    if not pairs:
        if not ctx.state.get("warned_no_pairs"):  # once a stage: why this step (and maybe others) learn nothing
            ctx.state["warned_no_pairs"] = True
            rewards = torch.nan_to_num(samples.rewards, nan=0.0)
            log.warning("stage %r step %d: no preference pairs, so no update: in every group of %d samples all "
                        "rewards were equal (mean %.3f); pairs need samples of one prompt that score differently. "
                        "Typical causes: too little SFT before (every sample wrong), or an all-or-nothing reward "
                        "on a weak model (a reward with partial credit helps). `pairs` in metrics.jsonl counts "
                        "them per step", stage.name, ctx.step + 1, stage.sampling.group_size, float(rewards.mean()))
        return None, None, metrics
    chosen, rejected = (samples.subset(torch.tensor(side)) for side in zip(*pairs))
    metrics["pairs/reward_margin"] = float((chosen.rewards - rejected.rewards).mean())
    return chosen, rejected, metrics


def _sums(policy, pair: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
    """[2B] summed log-probs and [2B] lengths of the concatenated (chosen, rejected) outputs."""
    logprobs = policy.logprobs(pair)
    mask = pair.mask.to(logprobs.device)
    return (logprobs * mask).sum(-1), mask.sum(-1).clamp(min=1.0)


def preference_loss(ctx: StageContext, chosen: Rollout, rejected: Rollout) -> tuple[torch.Tensor, dict]:
    """The stage's ``preference_loss`` on the pairs (one forward of policy and reference each)."""
    stage, n = ctx.stage, len(chosen)
    pair = Rollout.concat([chosen, rejected])
    pair.temperature = 1.0  # likelihoods of the answers, not of the sampling distribution
    logp, length = _sums(ctx.policy, pair)
    logp_w, logp_l, len_w, len_l = logp[:n], logp[n:], length[:n], length[n:]
    name, beta = stage.preference.loss, stage.preference.beta
    if name not in REFERENCE_FREE:
        with torch.no_grad():
            ref, _ = _sums(ctx.reference, pair)
        ref_w, ref_l = ref[:n], ref[n:]
    if name == "dpo":
        loss = losses.dpo(logp_w, logp_l, ref_w, ref_l, beta, stage.preference.label_smoothing)
    elif name == "robust":
        loss = losses.robust_dpo(logp_w, logp_l, ref_w, ref_l, beta, stage.preference.label_smoothing)
    elif name == "ipo":
        loss = losses.ipo(logp_w, logp_l, ref_w, ref_l, len_w, len_l, beta)
    elif name == "rdpo":
        loss = losses.rdpo(logp_w, logp_l, ref_w, ref_l, len_w, len_l, beta, stage.preference.rdpo_alpha)
    elif name == "dpo_norm":
        loss = losses.dpo_length_normalized(logp_w, logp_l, ref_w, ref_l, len_w, len_l, beta)
    elif name == "simpo":
        loss = losses.simpo(logp_w, logp_l, len_w, len_l, beta, stage.preference.simpo_gamma)
    elif name == "orpo":
        loss = -logp_w / len_w + stage.preference.orpo_lambda * losses.orpo_odds_ratio(logp_w / len_w, logp_l / len_l)
    elif name == "asft":
        loss = -logp_w / len_w + losses.asft(logp_w / len_w, logp_l / len_l)
    else:  # kto: chosen desirable, rejected undesirable; z0 from every answer under the next answer's prompt
        mismatched = _mismatched(pair)  # all 2n answers of the batch, as TRL's KTOTrainer
        with torch.no_grad():
            kl_logp, _ = _sums(ctx.policy, mismatched)
            kl_ref, _ = _sums(ctx.reference, mismatched)
        desirable = torch.arange(2 * n, device=logp.device) < n
        loss = losses.kto(logp, torch.cat([ref_w, ref_l]), desirable, kl_logp, kl_ref, beta)
    metrics = {"loss/preference": float(loss.detach().mean()), "logp/chosen": float(logp_w.detach().mean()),
               "logp/rejected": float(logp_l.detach().mean())}
    if name not in REFERENCE_FREE:
        margin = ((logp_w - ref_w) - (logp_l - ref_l)).detach()
        metrics.update({"rewards/margin": float(beta * margin.mean()), "rewards/accuracy": float((margin > 0).float().mean())})
    return loss.mean(), metrics


def _mismatched(rollout: Rollout) -> Rollout:
    """Each answer under the next answer's prompt (TRL's KTO reference point ``z0``, over the whole
    batch of answers); token actions only."""
    rows = rollout.actions.prompt_rows
    shifted = dataclasses.replace(rollout.actions, prompt_rows=rows[1:] + rows[:1])
    out = dataclasses.replace(rollout, actions=shifted)
    out.temperature = 1.0
    return out


def preference_step(ctx: StageContext, indices: list[int]) -> dict[str, float]:
    """Build pairs for ``indices`` (refreshing SPIN's reference when an iteration ends), one update."""
    stage = ctx.stage
    if stage.kind == "spin" and stage.preference.iteration_steps and ctx.step and ctx.step % stage.preference.iteration_steps == 0:
        ctx.reference.model.load_state_dict(ctx.policy.model.state_dict())  # the new iterate plays against itself
    chosen, rejected, metrics = make_pairs(ctx, ctx.batch(indices))
    if chosen is None:
        return {**metrics, "grad_norm": ctx.update(None)}
    with ctx.accelerator.autocast():
        loss, loss_metrics = preference_loss(ctx, chosen, rejected)
    return {**metrics, **loss_metrics, "grad_norm": ctx.update(loss), "samples": float(2 * len(chosen))}
