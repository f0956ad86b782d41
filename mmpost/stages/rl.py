"""The ``rl`` and ``mixed`` stages: sample a group per prompt, score, advantages, clipped policy gradient.

Terms, each switched on by the stage's config: KL to the start-of-stage model (in the loss or the
advantage), entropy bonus, critic loss (GAE), the demonstration term weighted by CHORD's mu
(``mixed``), the demonstration as one member of its group (LUFFY / ViSurf), SFT on a buffer of
prompts that no sample solved (ReLIFT), and a temperature controller holding the rollouts' entropy
near a target (AceReason), hybrid members that continue a demonstration prefix (Prefix-RFT).
"""

from __future__ import annotations

import functools
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from mmpost.algos.advantages import (gae, group_advantages, group_keep_mask, normalize, overlong_penalty,
                                     reinforce_pp_advantages, rloo_advantages, uniform_group_mask)
from mmpost.algos.kl import KL_ESTIMATORS, per_step_kl, sequence_kl
from mmpost.algos.pg import AGGREGATIONS, RATIO_LEVELS, aggregate, clipped_pg_loss
from mmpost.algos.schedules import chord_mu, cosine, entropy_temperature, sasr_sft_probability
from mmpost.algos.value import value_loss
from mmpost.rewarding import score_rollout
from mmpost import faults
from mmpost.distributed import process_sum, seeded, token_count, world
from mmpost.policy import Critic, GaussianKL, PrefixSampler, TokenDemos
from mmpost.registry import check_choice
from mmpost.stages.context import StageContext
from mmpost.stages.sft import demo_loss
from mmpost.types import Rollout, StageSection


ADVANTAGES = ("group", "gae", "rloo", "reinforce_pp", "reinforce_pp_baseline")


@dataclass
class PolicyGradient(StageSection):
    """The clipped policy-gradient term and its optimisation passes (``rl.pg.clip_high=0.28``)."""

    clip_low: float = 0.2  # PPO clip range below 1
    clip_high: float = 0.2  # above 1 (> clip_low is DAPO's clip-higher)
    ratio_level: str = "token"  # "token" (PPO/GRPO) | "sequence" (GSPO) | "sequence_sum" (TRL's RLOO)
    dual_clip: float = 0.0  # dual-clip constant c for negative advantages (pi_RL: 3; 0 = off)
    epochs: int = 1  # optimisation passes over each sampled batch (>1 reuses stored log-probs)
    minibatches: int = 1  # optimiser steps per pass (outputs split evenly)
    # "token_mean" (DAPO, TRL bnpo/dapo) | "sequence_mean" (GRPO paper, TRL grpo) | "max_length" (Dr.GRPO)
    aggregation: str = "token_mean"
    entropy_coef: float = 0.0  # entropy bonus: loss - coef * token-mean entropy (token policies)

    def __post_init__(self):
        check_choice("pg.aggregation", self.aggregation, AGGREGATIONS)
        check_choice("pg.ratio_level", self.ratio_level, RATIO_LEVELS)

    def check(self, stage) -> None:
        if stage.kind in ("rl", "mixed") and (stage.sampling.group_size * stage.batch_size) % self.minibatches:
            raise ValueError("pg.minibatches must divide batch_size * sampling.group_size")

    def requires(self, stage) -> list[tuple[type, str]]:
        return [(TokenDemos, "pg.entropy_coef")] if self.entropy_coef else []


@dataclass
class Advantage(StageSection):
    """How rewards become advantages (``rl.advantage.estimator=rloo``)."""

    # "group" (GRPO) | "gae" (PPO with a value head) | "rloo" | "reinforce_pp" | "reinforce_pp_baseline"
    estimator: str = "group"
    reward_scale: float = 1.0  # the weighted reward is multiplied by this first (TULU 3 RLVR's verifiable bonus: 10)
    scale_rewards: bool = True  # group: divide by the group std (False: Dr.GRPO)
    gamma: float = 0.99  # gae: discount per transition
    lam: float = 0.95  # gae: lambda
    normalize: bool = True  # gae: whiten advantages over the batch
    value_coef: float = 1.0  # gae: weight of the critic loss
    value_clip: float = 0.2  # gae: PPO value clipping (0 = off)
    bootstrap_truncated: bool = False  # gae: bootstrap from the critic at the time limit (False: the limit is terminal)

    def __post_init__(self):
        check_choice("advantage.estimator", self.estimator, ADVANTAGES)

    def requires(self, stage) -> list[tuple[type, str]]:
        critic = self.estimator == "gae" and stage.kind in ("rl", "mixed")
        return [(Critic, "advantage.estimator=gae")] if critic else []


@dataclass
class GroupFilter(StageSection):
    """Which samples keep a loss, and reward shaping by length (DAPO's filters)."""

    dynamic_sampling: bool = False  # drop groups whose rewards are all equal (DAPO)
    reward_range: list = field(default_factory=list)  # [low, high] keep groups whose mean reward is inside
    overlong: list = field(default_factory=list)  # [max_length, cache]: DAPO's soft overlong penalty on the reward
    mask_truncated: bool = False  # outputs cut at max_new_tokens get no loss (DAPO's overlong filtering)
    truncated_reward: float | None = None  # outputs cut at max_new_tokens get this reward (TULU 3's non-stop penalty: -10)

    def __post_init__(self):
        if self.reward_range and len(self.reward_range) != 2:
            raise ValueError(f"filter.reward_range is [low, high], got {self.reward_range}")
        self.reward_range = [float(v) for v in self.reward_range]
        if self.overlong and (len(self.overlong) != 2 or not 0 < int(self.overlong[1]) <= int(self.overlong[0])):
            raise ValueError(f"filter.overlong is [max_length, cache] with 0 < cache <= max_length, got {self.overlong}")
        self.overlong = [int(v) for v in self.overlong]

    def requires(self, stage) -> list[tuple[type, str]]:
        truncation = self.mask_truncated or self.truncated_reward is not None
        return [(TokenDemos, "filter.mask_truncated / filter.truncated_reward")] if truncation else []


@dataclass
class KL(StageSection):
    """KL to the frozen start-of-stage model (rl, mixed; rft on the kept samples)."""

    coef: float = 0.0  # weight of the KL term; 0 = no reference forward
    # "loss" (TRL's GRPO, Flow-GRPO) | "advantage" (Carve3D: per-sample KL, group-normalised, subtracted)
    # | "reward" (ReFT / PPO-RLHF: -coef * (log p_old - log p_ref) added to every step's reward; gae only)
    where: str = "loss"
    estimator: str = "k3"  # "k1" | "k2" | "k3" on sampled steps | "closed_form" (Gaussian policies: Flow-GRPO)

    def __post_init__(self):
        check_choice("kl.where", self.where, ("loss", "advantage", "reward"))
        check_choice("kl.estimator", self.estimator, (*KL_ESTIMATORS, "closed_form"))

    def check(self, stage) -> None:
        if self.where == "reward" and stage.advantage.estimator != "gae":
            raise ValueError("kl.where 'reward' needs advantage.estimator 'gae' (per-step rewards)")
        if self.where == "advantage" and stage.advantage.estimator != "group":
            raise ValueError("kl.where 'advantage' needs advantage.estimator 'group' (one KL per sample)")

    def needs_reference(self, stage) -> bool:
        return self.coef > 0 and stage.kind in ("rl", "mixed", "rft")

    def requires(self, stage) -> list[tuple[type, str]]:
        closed_form = self.estimator == "closed_form" and stage.kind in ("rl", "mixed")
        return [(GaussianKL, "kl.estimator=closed_form")] if closed_form else []

    def closed_form_in_loss(self) -> bool:
        """Log-probs and the exact KL from one forward (Gaussian policies), added to the loss."""
        return self.coef > 0 and self.where == "loss" and self.estimator == "closed_form"


@dataclass
class DemosInRL(StageSection):
    """Demonstrations inside an RL stage: CHORD's mixed loss, LUFFY's group member, Prefix-RFT's
    prefixes, ReLIFT's buffer, SASR's switch."""

    mu: list = field(default_factory=lambda: [0.1, 0.1, 0, 0])  # mixed: CHORD's [peak, valley, warmup, decay]
    data: str = ""  # mixed: split the SFT term samples from ("" = this stage's rows; "demos" for a robot)
    in_group: bool = False  # rl: the demonstration joins each prompt's group (LUFFY, ViSurf), group_size - 1 samples
    shaping_gamma: float = 0.0  # rl: LUFFY's policy shaping of the demonstration's tokens, -A p/(p + gamma); 0 = off
    prefix_samples: int = 0  # rl: members of each group that continue a demonstration prefix (Prefix-RFT)
    prefix_ratio: list = field(default_factory=lambda: [0.95, 0.05])  # prefix share, cosine from first to last
    prefix_entropy_top: float = 0.2  # share of prefix tokens (highest entropy) that keep a loss
    relift_size: int = 0  # rl: SFT on prompts no sample solved once this many are buffered (ReLIFT); 0 = off
    sasr: bool = False  # rl: each step is SFT with probability min(1, |g_SFT| / |g_SFT at step 1|), else GRPO (SASR)

    def __post_init__(self):
        if len(self.mu) != 4:
            raise ValueError(f"demos.mu is [peak, valley, warmup_steps, decay_steps], got {self.mu}")
        self.mu = [float(self.mu[0]), float(self.mu[1]), int(self.mu[2]), int(self.mu[3])]
        self.prefix_ratio = [float(v) for v in self.prefix_ratio]

    def check(self, stage) -> None:
        sampled = stage.sampling.group_size - int(self.in_group)  # the demonstration takes one member's place
        if self.prefix_samples and not 0 < self.prefix_samples < sampled:
            raise ValueError(f"demos.prefix_samples must be between 1 and {sampled - 1} (sampling.group_size - 1"
                             f"{', less the demonstration in the group' if self.in_group else ''})")
        if self.in_group and stage.sampling.group_size < 2:
            raise ValueError("demos.in_group needs sampling.group_size >= 2 (the demonstration is one member)")

    def requires(self, stage) -> list[tuple[type, str]]:
        return ([(TokenDemos, "demos.in_group")] if self.in_group else []) + \
            ([(PrefixSampler, "demos.prefix_samples")] if self.prefix_samples else [])


def compute_advantages(rollout, stage) -> dict[str, float]:
    """Set ``rollout.advantages`` (and ``returns`` for GAE); drop filtered groups from the mask."""
    metrics = {}
    if stage.advantage.estimator == "group":
        rollout.advantages = group_advantages(rollout.rewards, rollout.group, scale=stage.advantage.scale_rewards)
        if stage.kl.coef > 0 and stage.kl.where == "advantage":  # Carve3D: A = z(r) - beta * z(KL), per prompt
            kl = sequence_kl(rollout.logprobs, rollout.ref_logprobs, rollout.mask)
            rollout.advantages = rollout.advantages - stage.kl.coef * group_advantages(kl, rollout.group)
    elif stage.advantage.estimator == "rloo":
        rollout.advantages = rloo_advantages(rollout.rewards, rollout.group)
    elif stage.advantage.estimator.startswith("reinforce_pp"):
        rollout.advantages = reinforce_pp_advantages(rollout.rewards, rollout.group, rollout.mask,
                                                     subtract_group_mean=stage.advantage.estimator.endswith("baseline"))
    else:
        if rollout.values is None or rollout.step_rewards is None:
            raise ValueError(f"stage {stage.name!r}: advantage 'gae' needs a policy with a value head acting "
                             "in an environment (per-transition rewards and values)")
        bootstrap = rollout.bootstrap if stage.advantage.bootstrap_truncated else torch.zeros_like(rollout.bootstrap)
        advantages, rollout.returns = gae(rollout.step_rewards, rollout.values, rollout.alive, bootstrap,
                                          stage.advantage.gamma, stage.advantage.lam)
        if stage.advantage.normalize:
            advantages = normalize(advantages, rollout.alive, total=process_sum)  # over all processes' rows
        # the action steps of a transition are contiguous: one advantage per transition, repeated
        rollout.advantages = advantages.repeat_interleave(rollout.mask.shape[1] // advantages.shape[1], dim=1)
        metrics["value/mean"] = float((rollout.values * rollout.alive).sum() / rollout.alive.sum().clamp(min=1))
    groups = torch.unique(rollout.group)
    if len(groups) < rollout.group.shape[0]:  # groups of several outputs: how many teach nothing
        spread = uniform_group_mask(rollout.rewards, rollout.group)
        metrics["rl/zero_variance_groups"] = float(sum(not bool(spread[rollout.group == g].any()) for g in groups)
                                                   / len(groups))
    keep = torch.ones(rollout.rewards.shape[0], dtype=torch.bool)
    if stage.filter.reward_range:
        keep &= group_keep_mask(rollout.rewards, rollout.group, *stage.filter.reward_range)
    if stage.filter.dynamic_sampling:
        keep &= uniform_group_mask(rollout.rewards, rollout.group)
    if stage.filter.mask_truncated and getattr(rollout, "truncated", None) is not None:
        keep &= ~rollout.truncated
        metrics["rl/truncated_fraction"] = float(rollout.truncated.float().mean())
    if not bool(keep.all()):
        rollout.mask = rollout.mask * keep[:, None].to(rollout.mask.dtype)
    if stage.filter.reward_range or stage.filter.dynamic_sampling:
        metrics["rl/kept_fraction"] = float(keep.float().mean())
    return metrics


def shape_rewards(rollout: Rollout, stage) -> None:
    """The scored rewards, shaped before advantages: scaled (``advantage.reward_scale``), DAPO's soft
    overlong penalty added, and TULU 3's non-stop penalty replacing the reward of a truncated output."""
    rollout.rewards = rollout.rewards * stage.advantage.reward_scale
    if stage.filter.overlong:
        rollout.rewards = rollout.rewards + overlong_penalty(rollout.num_steps, *stage.filter.overlong)
    if stage.filter.truncated_reward is not None and rollout.truncated is not None:
        rollout.rewards = torch.where(rollout.truncated, torch.tensor(float(stage.filter.truncated_reward)),
                                      rollout.rewards)
        rollout.metrics["rl/truncated_fraction"] = float(rollout.truncated.float().mean())


def outcome_as_step_rewards(rollout: Rollout, policy, kl_coef: float = 0.0) -> None:
    """Token outputs for GAE (ReFT): each token is a transition, the outcome reward arrives on the last
    real token, ``-kl_coef * (log p_old - log p_ref)`` on every token (KL in the reward), values from
    the policy's value head at sampling time, no bootstrap (a completion ends its episode)."""
    with torch.no_grad():
        rollout.values = policy.values(rollout).float().cpu()
    step_rewards = torch.zeros_like(rollout.mask)
    last = (rollout.num_steps.long() - 1).clamp(min=0)
    step_rewards[torch.arange(len(rollout)), last] = torch.nan_to_num(rollout.rewards, nan=0.0)
    if kl_coef:
        step_rewards = step_rewards - kl_coef * (rollout.logprobs - rollout.ref_logprobs) * rollout.mask
    rollout.step_rewards, rollout.alive = step_rewards * rollout.mask, rollout.mask
    rollout.bootstrap = torch.zeros(len(rollout))


def policy_forward(ctx: StageContext, part: Rollout, closed_form: bool) -> tuple:
    """The policy's log-probs of ``part`` (with grad), its entropy when a term needs it, and the exact
    per-step KL to the reference for Gaussian policies (``closed_form``): ``(logprobs, entropy, step_kl)``."""
    if closed_form:  # Gaussian policies: log-probs and the exact KL to the reference from one forward
        logprobs, step_kl = ctx.policy.logprobs_and_kl(part, ctx.reference)
        return logprobs, None, step_kl
    if ctx.stage.pg.entropy_coef:
        return (*ctx.policy.logprobs(part, return_entropy=True), None)
    return ctx.policy.logprobs(part), None, None


def pg_objective(ctx: StageContext, part: Rollout, closed_form: bool,
                 forward: tuple | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped policy gradient + critic + KL + entropy terms on one minibatch of outputs (``forward``:
    :func:`policy_forward` of ``part`` when already computed)."""
    stage, policy, reference = ctx.stage, ctx.policy, ctx.reference
    logprobs, entropy, step_kl = forward or policy_forward(ctx, part, closed_form)
    device = logprobs.device
    mask = part.mask.to(device)
    loss, metrics = clipped_pg_loss(logprobs, part.logprobs.to(device), part.advantages.to(device), mask,
                                    stage.pg.clip_low, stage.pg.clip_high, stage.pg.aggregation, stage.pg.dual_clip,
                                    stage.pg.ratio_level, stage.sampling.max_new_tokens, token_count(mask),
                                    part.off_policy, stage.demos.shaping_gamma)
    metrics["loss/pg"] = loss.item()
    if stage.advantage.estimator == "gae":
        alive = part.alive.to(device)
        critic = value_loss(policy.values(part), part.values.to(device), part.returns.to(device), alive,
                            stage.advantage.value_clip, transitions=token_count(alive))
        loss = loss + stage.advantage.value_coef * critic
        metrics["loss/value"] = critic.item()
    if reference is not None and stage.kl.coef > 0 and stage.kl.where == "loss":
        if not closed_form:
            step_kl = per_step_kl(logprobs, part.ref_logprobs.to(device), stage.kl.estimator)
        kl = aggregate(step_kl, mask, stage.pg.aggregation, stage.sampling.max_new_tokens, token_count(mask))
        loss = loss + stage.kl.coef * kl
        metrics["kl"] = kl.item()
    if entropy is not None:  # token-mean entropy, whatever the PG aggregation (as TRL)
        mean_entropy = aggregate(entropy, mask, "token_mean", tokens=token_count(mask))
        loss = loss - stage.pg.entropy_coef * mean_entropy
        metrics["entropy/full"] = mean_entropy.item()
    return loss, metrics


def sample_groups(ctx: StageContext, batch: list[dict], temperature: float) -> Rollout:
    """Each prompt's group, sampled ``generation_batch`` prompts per call, each call seeded by its
    position in the run (:func:`mmpost.distributed.seeded`: the same samples on one process or
    several)."""
    per_call = ctx.stage.sampling.generation_batch or len(batch)
    calls = -(-len(batch) // per_call)
    rank, _ = world()
    parts = []
    for j, start in enumerate(range(0, len(batch), per_call)):
        with seeded(ctx.seed, ctx.stage_index, ctx.step, rank * calls + j):
            part = _sample_groups(ctx, batch[start:start + per_call], temperature)
        part.group = part.group + start
        parts.append(part)
    return parts[0] if len(parts) == 1 else Rollout.concat(parts)


def _sample_groups(ctx: StageContext, batch: list[dict], temperature: float) -> Rollout:
    """``sampling.group_size`` members per prompt: outputs of the policy, of which ``demos.prefix_samples``
    continue a demonstration prefix (Prefix-RFT), and with ``demos.in_group`` the demonstration itself
    as the last member, marked ``off_policy`` (LUFFY: 7 samples + 1 demonstration)."""
    stage, policy = ctx.stage, ctx.policy
    sampled = stage.sampling.group_size - int(stage.demos.in_group)
    if stage.demos.prefix_samples:
        ratio = cosine(ctx.step, ctx.steps, *stage.demos.prefix_ratio)
        rollout = Rollout.concat([
            policy.rollout(batch, sampled - stage.demos.prefix_samples, temperature=temperature),
            policy.prefixed_rollout(batch, stage.demos.prefix_samples, ratio, temperature=temperature,
                                    entropy_top=stage.demos.prefix_entropy_top)])
        rollout.metrics["prefix/ratio"] = ratio
    else:
        rollout = policy.rollout(batch, sampled, temperature=temperature)
    if stage.demos.in_group:
        rollout = Rollout.concat([rollout, policy.demo_rollout(batch, temperature=temperature)])
        rollout.off_policy = torch.arange(len(rollout)) >= len(rollout) - len(batch)
        rollout.metrics["demos/in_group"] = float(len(batch))
    return rollout


def rl_step(ctx: StageContext, indices: list[int]) -> dict[str, float]:
    """Sample, score, compute advantages, then ``epochs`` x ``minibatches`` optimiser steps (or, with
    ``sasr``, an SFT step instead when the switching rule draws one)."""
    stage = ctx.stage
    switch = _sasr_switch(ctx, indices) if stage.demos.sasr else {}
    if switch.get("sasr/sft"):
        return switch
    started = time.perf_counter()
    batch = ctx.batch(indices)
    temperature = ctx.state.get("temperature", stage.sampling.temperature)
    rollout = sample_groups(ctx, batch, temperature)
    faults.reached("rl_sampling")
    generated = time.perf_counter()
    closed_form = stage.kl.closed_form_in_loss()
    orders = [torch.randperm(len(rollout)).chunk(stage.pg.minibatches) for _ in range(stage.pg.epochs)]
    # The rewards (often sandboxed programs, in other processes) are computed in a thread while this
    # process runs the first minibatch's forward pass, which does not need them.
    scoring = _scorer().submit(_timed, score_rollout, rollout, ctx.rewards, ctx.weights)
    first_forward = None
    if stage.advantage.estimator != "gae":  # GAE's values are read after the rewards
        with ctx.accelerator.autocast():
            first_forward = policy_forward(ctx, rollout.subset(orders[0][0]), closed_form)
    waited = time.perf_counter()
    metrics, reward_seconds = scoring.result()
    scored = time.perf_counter()
    shape_rewards(rollout, stage)
    if ctx.reference is not None and stage.kl.coef > 0:
        with torch.no_grad():
            rollout.ref_logprobs = ctx.reference.logprobs(rollout).cpu()
        metrics["kl/sampled"] = float(sequence_kl(rollout.logprobs, rollout.ref_logprobs, rollout.mask).mean())
    if stage.advantage.estimator == "gae" and rollout.step_rewards is None:  # a sequence scored once at its end
        outcome_as_step_rewards(rollout, ctx.policy, stage.kl.coef if stage.kl.where == "reward" else 0.0)
    metrics.update(compute_advantages(rollout, stage))
    mu = chord_mu(ctx.step, *stage.demos.mu) if stage.kind == "mixed" else 0.0
    demos = ctx.demo_batch(indices) if stage.kind == "mixed" else None
    for epoch, order in enumerate(orders):
        for i, index in enumerate(order):
            forward = first_forward if (epoch, i) == (0, 0) else None
            with ctx.accelerator.autocast():
                loss, part_metrics = pg_objective(ctx, rollout.subset(index), closed_form, forward)
                if mu:  # CHORD: (1 - mu) * GRPO + mu * SFT on the prompts' demonstrations
                    sft, _ = demo_loss(ctx, demos)
                    loss = (1 - mu) * loss + mu * sft
                    part_metrics.update({"loss/sft": sft.item(), "mu": mu})
            metrics.update({"grad_norm": ctx.update(loss), **part_metrics})
    if stage.demos.relift_size:
        metrics.update(_relift(ctx, indices, rollout))
    entropy = float(-(rollout.logprobs * rollout.mask).sum() / rollout.mask.sum().clamp(min=1))
    if stage.sampling.target_entropy:
        ctx.state["temperature"] = entropy_temperature(temperature, entropy, stage.sampling.target_entropy,
                                                       stage.sampling.temperature_rate)
    metrics.update({
        **rollout.metrics, "time/update": time.perf_counter() - scored + (waited - generated), "loss/total": loss.item(),
        "tokens": float(rollout.mask.sum()), "temperature": temperature,
        # -mean log p of sampled tokens: an unbiased estimate of the sampling distribution's entropy
        "entropy": entropy, "rollout/len": float(rollout.num_steps.float().mean()),
        "time/generate": generated - started,
        # reward time the step waited for (the rest ran beside the first forward pass), and its full length
        "time/reward": scored - waited, "time/reward_busy": reward_seconds, **switch,
    })
    return metrics


def _sasr_switch(ctx: StageContext, indices: list[int]) -> dict[str, float]:
    """SASR: the SFT gradient on the prompts' demonstrations decides the step. With probability
    :func:`sasr_sft_probability` it is applied (an SFT step: ``sasr/sft`` = 1 in the metrics returned),
    otherwise it is discarded and the step is GRPO. The reference norm is the first step's, kept in the
    checkpointed stage state; the draw uses the checkpointed torch RNG (exact resume)."""
    with ctx.accelerator.autocast():
        loss, metrics = demo_loss(ctx, ctx.demo_batch(indices))
    grad_norm = ctx.backward(loss)
    reference = ctx.state.setdefault("sasr_reference_grad_norm", grad_norm)
    probability = sasr_sft_probability(grad_norm, reference)
    chosen = bool(torch.rand(()) < probability)
    ctx.state["sasr_sft_steps"] = ctx.state.get("sasr_sft_steps", 0) + int(chosen)
    switch = {"sasr/sft_probability": probability, "sasr/sft_grad_norm": grad_norm, "sasr/sft": float(chosen),
              "sasr/sft_steps": float(ctx.state["sasr_sft_steps"])}
    if not chosen:
        ctx.optimizer.zero_grad(set_to_none=True)
        return switch
    ctx.apply(loss, grad_norm)
    for _ in range(ctx.stage.updates_per_step() - 1):  # the schedule planned this step's RL updates
        ctx.scheduler.step()
    return {"grad_norm": grad_norm, "loss/sft": loss.item(), **metrics, **switch}


@functools.cache
def _scorer() -> ThreadPoolExecutor:
    """The one thread that scores a rollout beside the first forward pass (started on first use)."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="rewards")


def _timed(fn, *args):
    start = time.perf_counter()
    return fn(*args), time.perf_counter() - start


def _relift(ctx: StageContext, indices: list[int], rollout: Rollout) -> dict[str, float]:
    """ReLIFT: prompts none of whose samples reached ``solved_threshold`` go to a buffer; once it holds
    ``relift_size`` of them, one SFT step on their demonstrations (``TheRoadQaQ/ReLIFT`` trainer.py)."""
    stage = ctx.stage
    buffer = ctx.state.setdefault("relift", [])
    rewards = torch.nan_to_num(rollout.rewards, nan=float("-inf"))
    for g, row in enumerate(indices):
        if float(rewards[rollout.group == g].max()) < stage.solved_threshold:
            buffer.append(row)
    metrics = {"relift/buffer": float(len(buffer))}
    if len(buffer) >= stage.demos.relift_size:
        rows = ctx.batch(buffer[:stage.demos.relift_size])
        del buffer[:stage.demos.relift_size]
        with ctx.accelerator.autocast():
            loss, _ = demo_loss(ctx, rows)
        # an update between the planned ones: it leaves the learning-rate schedule where it is
        metrics.update({"relift/loss": loss.item(), "relift/grad_norm": ctx.update(loss, advance_schedule=False)})
    return metrics
