"""The headroom RL can sharpen: a model's pass@k against its pass@1 on training prompts.

RL with group advantages (GRPO and its relatives) learns only from groups whose samples differ in
reward: a prompt the model always solves, or never does, teaches it nothing. Before blaming the
algorithm for a flat reward curve, measure what the SFT model leaves to sharpen: the chance one
sample solves a training prompt (pass@1), the chance one of ``k`` does (pass@k, the unbiased estimator
of Chen et al. 2021 from ``n >= k`` samples), and the share of prompts whose ``n`` samples all agree
(all solved or none: zero reward variance in a GRPO group of that size). For a graded reward (MRC, IoU)
the same question is asked without a threshold: the expected best of ``k`` samples' reward against one
sample's (``best_of_k``, again an unbiased estimator from the ``n`` samples) and the spread of rewards
within a prompt's samples (``group_std``), which is what group advantages learn from. ``mmpost headroom``.
"""

from __future__ import annotations

import contextlib
import math

import torch


def pass_at_k(n: int, c: int, k: int) -> float:
    """``1 - C(n - c, k) / C(n, k)``: the chance that one of ``k`` of ``n`` samples, ``c`` of them right, is right.

    >>> pass_at_k(8, 0, 4), pass_at_k(8, 8, 1), round(pass_at_k(4, 1, 2), 3)
    (0.0, 1.0, 0.5)
    """
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def best_of_k(rewards: list[float], k: int) -> float:
    """The expected maximum of ``k`` of the ``n`` rewards drawn without replacement: the ``i``-th smallest
    (1-based) is the maximum in ``C(i - 1, k - 1)`` of the ``C(n, k)`` draws.

    >>> best_of_k([0.0, 1.0, 2.0, 3.0], 1), best_of_k([0.0, 1.0, 2.0, 3.0], 4), best_of_k([0.0, 1.0, 2.0, 3.0], 2)
    (1.5, 3.0, 2.3333333333333335)
    """
    ordered = sorted(rewards)
    return sum(math.comb(i - 1, k - 1) * r for i, r in enumerate(ordered, 1) if i >= k) / math.comb(len(ordered), k)


def headroom(cfg, prompts: int = 64, samples: int = 8, temperature: float = 1.0, split: str = "train") -> dict:
    """pass@1, pass@k for k = 1, 2, 4, ... up to ``samples``, and the zero-variance share, of ``cfg.model``
    on the first ``prompts`` rows of ``split``; a sample counts as solved at the task's ``solved_threshold``."""
    from mmpost.engine import build_task
    from mmpost.model_path import build_policy
    from mmpost.rewarding import score_rollout
    from mmpost.types import task_member

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    task, rewards, weights, eval_rewards = build_task(cfg)
    rows = task.rows(split)[:prompts]
    threshold = float(task_member(task, "solved_threshold"))
    metric = {task.metric: eval_rewards[task.metric]}
    policy = build_policy(task, cfg.model)
    groups = []  # each prompt's sample rewards
    with contextlib.closing(policy):
        for start in range(0, len(rows), cfg.eval.batch_size):
            chunk = rows[start:start + cfg.eval.batch_size]
            rollout = policy.rollout(chunk, samples, temperature=temperature)
            score_rollout(rollout, metric, {task.metric: 1.0})
            groups += [rollout.rewards[rollout.group == g].tolist() for g in range(len(chunk))]
    scored = [[r for r in group if math.isfinite(r)] for group in groups]  # (a failed reward is NaN: unsolved)
    solved = [sum(r >= threshold for r in group) for group in scored]
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= samples]
    report = {f"pass@{k}": sum(pass_at_k(samples, c, k) for c in solved) / len(solved) for k in ks}
    scored = [group for group in scored if len(group) == samples]
    if scored:
        report.update({f"best_of_{k}": sum(best_of_k(group, k) for group in scored) / len(scored) for k in ks})
        report["group_std"] = sum(float(torch.tensor(group).std(unbiased=False)) for group in scored) / len(scored)
    report.update({"prompts": len(solved), "samples": samples, "temperature": temperature, "split": split,
                   "zero_variance_share": sum(c in (0, samples) for c in solved) / len(solved),
                   "never_solved_share": sum(c == 0 for c in solved) / len(solved)})
    return report
