"""Self-ensembled in-context learning: the no-training baseline a fine-tuned model should beat.

"On Task Performance and Model Calibration with Supervised and Self-Ensembled In-Context Learning"
(arXiv 2312.13772; ``cambridgeltl/ensembled-sicl``): one model answers each held-out prompt ``members``
times, each time after a different draw of ``shots`` solved training rows as in-context examples, and
the answers are combined. Of the authors' three combinations:

* ``max``: each answer's highest confidence over the members, renormalised over the answers (the one
  the paper finds most robust and best calibrated);
* ``mean``: each answer's mean confidence over all members (0 where a member gave another), renormalised;
* ``vote``: confidence-weighted majority vote, its confidence the mean of the winners'.

The authors combine label distributions of classification tasks; here a member's answer is what the
task's reward reads (``#### N`` with an ``answer`` column, the option with ``choices``, else the
whole output) and its confidence the greedy output's sequence probability. Calibration is the
expected calibration error over 10 equal-width bins (torchmetrics' L1 ECE, as the authors).
Run with ``mmpost icl --task arithmetic --model DIR``; a fine-tuned model given with ``--model``
measures the paper's supervised ICL.
"""

from __future__ import annotations

import contextlib
import math
import random

import torch

COMBINATIONS = ("max", "mean", "vote")
MEDIA = ("images", "videos", "audios")


def with_examples(row: dict, examples: list[dict]) -> dict:
    """``row`` with ``examples`` (solved rows) as earlier chat turns: each example's prompt, then its
    completion as the assistant's answer; media lists joined in the same order."""
    prompt = []
    for example in examples:
        prompt += [*example["prompt"], {"role": "assistant", "content": example["completion"]}]
    out = {**row, "prompt": prompt + list(row["prompt"])}
    for key in MEDIA:
        if any(key in r for r in (*examples, row)):
            out[key] = [item for r in (*examples, row) for item in r.get(key, [])]
    return out


def answer_key(output: str, row: dict) -> str:
    """What two members must share to agree: the verifiable answer, the chosen option or the text."""
    from mmpost.rewards.answer import extract_answer
    from mmpost.rewards.choice import chosen_option

    if "answer" in row:
        return str(extract_answer(output))
    if "choices" in row:
        return str(chosen_option(output, row["choices"]))
    return " ".join(output.split())


def combine(answers: list[str], confidences: list[float], how: str = "max") -> tuple[int, float]:
    """The index of a member holding the ensemble's answer (its most confident one) and the ensemble's
    confidence in it, by ``how`` (see the module docstring).

    >>> combine(["7", "8", "7"], [0.2, 0.5, 0.3], "vote")
    (2, 0.25)
    >>> combine(["7", "8", "7"], [0.2, 0.5, 0.3], "max")
    (1, 0.625)
    """
    if how not in COMBINATIONS:
        raise ValueError(f"unknown combination {how!r}; expected one of {', '.join(COMBINATIONS)}")
    score: dict[str, float] = {}
    for answer, confidence in zip(answers, confidences):
        if how == "max":
            score[answer] = max(score.get(answer, 0.0), confidence)
        else:  # mean (the 1/members factor cancels in the renormalisation) and vote both sum
            score[answer] = score.get(answer, 0.0) + confidence
    winner = max(score, key=score.get)
    members = [i for i, a in enumerate(answers) if a == winner]
    best = max(members, key=lambda i: confidences[i])
    if how == "vote":
        return best, sum(confidences[i] for i in members) / len(members)
    total = sum(score.values())
    return best, score[winner] / total if total > 0 else 1.0 / len(score)


def expected_calibration_error(confidences: list[float], correct: list[bool], bins: int = 10) -> float:
    """``sum_b |accuracy_b - confidence_b| n_b / N`` over equal-width confidence bins (right-closed).

    >>> expected_calibration_error([0.95, 0.85, 0.25], [True, False, False])
    0.3833...
    """
    confidence, hit = torch.tensor(confidences, dtype=torch.float64), torch.tensor(correct, dtype=torch.float64)
    which = torch.clamp(torch.ceil(confidence * bins) - 1, 0, bins - 1)
    error = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            error += float(inside.sum()) / len(confidences) * abs(float(hit[inside].mean() - confidence[inside].mean()))
    return error


def self_ensembled_icl(cfg, shots: int = 2, members: int = 5, how: str = "max", limit: int = 0) -> dict:
    """The held-out metric and calibration of ``cfg.model`` answering with ``shots`` in-context examples:
    one prompt (the first member alone) and the ensemble of ``members`` prompts combined by ``how``.
    ``limit`` > 0 evaluates the first ``limit`` held-out rows."""
    from mmpost.engine import build_task
    from mmpost.model_path import build_policy
    from mmpost.rewarding import score_rollout
    from mmpost.types import task_member

    if shots < 0 or members < 1:
        raise ValueError(f"icl: shots must be >= 0 and members >= 1, got {shots} and {members}")
    torch.set_num_threads(cfg.threads)
    task, _, weights, eval_rewards = build_task(cfg)
    heldout, pool = task.rows("heldout"), task.rows("train")
    heldout = heldout[:limit] if limit else heldout
    metric = {task.metric: eval_rewards[task.metric]}
    policy = build_policy(task, cfg.model)
    answers, confidences, scores = [], [], []
    with contextlib.closing(policy):
        for m in range(members):
            rng = random.Random(f"{cfg.seed}:icl:{m}")  # each member its own draw of examples, per row
            rows = [with_examples(row, rng.sample(pool, shots)) for row in heldout]
            for start in range(0, len(rows), cfg.eval.batch_size):
                chunk = rows[start:start + cfg.eval.batch_size]
                rollout = policy.rollout(chunk, 1, greedy=True)
                score_rollout(rollout, metric, {task.metric: 1.0})
                sequence_logprob = (rollout.logprobs * rollout.mask).sum(-1)
                answers += [answer_key(o, r) for o, r in zip(rollout.outputs, chunk)]
                confidences += [math.exp(float(v)) for v in sequence_logprob]
                scores += torch.nan_to_num(rollout.rewards, nan=0.0).tolist()
    n = len(heldout)
    per_member = lambda values: [values[m * n:(m + 1) * n] for m in range(members)]  # noqa: E731
    answers, confidences, scores = per_member(answers), per_member(confidences), per_member(scores)
    solved = float(task_member(task, "solved_threshold"))  # a score that counts as correct, for calibration
    single = [(confidences[0][i], scores[0][i]) for i in range(n)]
    ensemble = []
    for i in range(n):
        best, confidence = combine([answers[m][i] for m in range(members)], [confidences[m][i] for m in range(members)], how)
        ensemble.append((confidence, scores[best][i]))
    report = lambda pairs: {"metric": sum(s for _, s in pairs) / n,  # noqa: E731
                            "ece": expected_calibration_error([c for c, _ in pairs], [s >= solved for _, s in pairs])}
    return {"task": cfg.task, "model": cfg.model or "(task default)", "shots": shots, "members": members,
            "combination": how, "rows": n, "metric_name": task.metric, "one_prompt": report(single),
            "ensemble": report(ensemble)}
