"""DaMo: a learned data-mixture optimiser over a stage's row splits (arXiv 2510.19336, ``OPPO-Mente-Lab/DaMo``).

DaMo picks the mixture of a fine-tuning stage's datasets without training on every mixture: the
candidates are all ways of filling a batch of ``b`` rows from the ``m`` datasets (compositions of
``b``); short trial runs train on a random sample of them; a small MLP (two hidden layers of 100, as
the authors' ``MLPRegressor``) learns to predict the held-out scores from the mixture; every candidate
is then predicted and ranked by the mean of its predicted scores, and the best is trained in full.

Here the scores are the task's held-out greedy metrics (the headline metric and its breakdown, e.g.
arithmetic's accuracy on 2- and 3-operation problems), each trial one short stage from the start
model. The authors also feed the training progress of several checkpoints per trial to the predictor;
one checkpoint per trial here. ``mmpost damo --task arithmetic`` runs it and prints the ``--set`` that
trains the chosen mixture.
"""

from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path

import torch


def candidate_mixtures(m: int, b: int = 16) -> list[tuple[int, ...]]:
    """Every composition of ``b`` rows into ``m`` datasets (``C(b + m - 1, m - 1)`` of them).

    >>> candidate_mixtures(2, 2)
    [(0, 2), (1, 1), (2, 0)]
    """
    if m == 1:
        return [(b,)]
    return [(first, *rest) for first in range(b + 1) for rest in candidate_mixtures(m - 1, b - first)]


def mixture_rows(stage, splits: list[str], counts: tuple[int, ...], sizes: dict[str, int]) -> dict:
    """Overrides making ``stage`` train on ``splits`` in the proportions ``counts``: the split of the
    largest share is the stage's data, the others join it (``rows.mix``) in numbers that keep the
    proportions, up to the splits' sizes."""
    lead = max(range(len(splits)), key=lambda i: counts[i])
    main = splits[lead]
    mix = {}
    for split, count in zip(splits, counts):
        if split != main and count:
            mix[split] = min(1.0, count / counts[lead] * sizes[main] / sizes[split])
    return {f"{stage}.data": main, f"{stage}.rows.mix": mix}


class ScorePredictor(torch.nn.Module):
    """Mixture proportions -> held-out scores: an MLP with two hidden layers of 100 (ReLU), fitted by
    Adam on the squared error (the authors: scikit-learn's ``MLPRegressor(hidden_layer_sizes=(100, 100))``)."""

    def __init__(self, inputs: int, outputs: int, hidden: int = 100):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(inputs, hidden), torch.nn.ReLU(),
                                       torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @classmethod
    def fit(cls, x: torch.Tensor, y: torch.Tensor, steps: int = 1500, lr: float = 1e-3, seed: int = 0) -> "ScorePredictor":
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = cls(x.shape[1], y.shape[1])
            optimizer = torch.optim.Adam(model.parameters(), lr=lr)
            for _ in range(steps):
                optimizer.zero_grad()
                loss = torch.nn.functional.mse_loss(model(x), y)
                loss.backward()
                optimizer.step()
        return model.eval()


def rank_mixtures(trials: list[tuple[tuple[int, ...], list[float]]], b: int, seed: int = 0,
                  steps: int = 1500) -> tuple[list[tuple[tuple[int, ...], float]], float]:
    """Fit the predictor on ``trials`` (counts, scores) and rank every candidate by its mean predicted
    score; also returns the fit's R^2 on the trials."""
    m = len(trials[0][0])
    x = torch.tensor([counts for counts, _ in trials], dtype=torch.float32) / b
    y = torch.tensor([scores for _, scores in trials], dtype=torch.float32)
    model = ScorePredictor.fit(x, y, steps=steps, seed=seed)
    with torch.no_grad():
        residual = ((model(x) - y) ** 2).sum()
        spread = ((y - y.mean(0)) ** 2).sum()
        r2 = float(1 - residual / spread) if spread > 0 else 1.0
        candidates = candidate_mixtures(m, b)
        predicted = model(torch.tensor(candidates, dtype=torch.float32) / b).mean(-1)
    order = torch.argsort(predicted, descending=True).tolist()
    return [(candidates[i], float(predicted[i])) for i in order], r2


def damo(cfg, stage: str = "sft", splits: list[str] | None = None, trials: int = 8, trial_steps: int = 0,
         batch: int = 16, out_dir: str = "") -> dict:
    """Run DaMo's trials for ``stage`` of ``cfg`` (a resolved config) over ``splits`` (default: the
    task's ``abilities``), fit the predictor, rank the candidates; write ``damo.json`` in ``out_dir``.
    Each trial trains ``stage`` alone for ``trial_steps`` (default: its steps / 4) from the start model."""
    import mmpost
    from mmpost.config import apply_overrides
    from mmpost.engine import train
    from mmpost.types import task_member

    task_cls = mmpost.TASKS.get(cfg.task)
    splits = list(splits or task_member(task_cls, "abilities"))
    if len(splits) < 2:
        raise ValueError(f"damo mixes two or more row splits; task {cfg.task!r} declares none (give --splits)")
    base = copy.deepcopy(cfg)
    base.stages = [s for s in base.stages if s.name == stage]
    if not base.stages:
        raise ValueError(f"damo: no stage {stage!r}; stages: {', '.join(s.name for s in cfg.stages)}")
    base.stages[0].steps = trial_steps or max(1, base.stages[0].steps // 4)
    if math.comb(batch + len(splits) - 1, len(splits) - 1) > 200_000:
        raise ValueError(f"damo: {len(splits)} splits in batches of {batch} make more than 200,000 candidate mixtures; "
                         "use a smaller --batch (the authors' 12 datasets x 16 rows is 1.3e7)")
    task = task_cls(base)
    sizes = {split: len(task.rows(split)) for split in splits}
    root = Path(out_dir or f"runs/damo-{cfg.task}")
    root.mkdir(parents=True, exist_ok=True)
    candidates = candidate_mixtures(len(splits), batch)
    chosen = random.Random(f"{cfg.seed}:damo").sample(candidates, min(trials, len(candidates)))
    results = []
    for i, counts in enumerate(chosen):
        trial = copy.deepcopy(base)
        trial.output_dir = str(root / f"trial-{i}")
        apply_overrides(trial, mixture_rows(stage, splits, counts, sizes))
        print(f"damo trial {i + 1}/{len(chosen)}: {dict(zip(splits, counts))} of {batch}", flush=True)
        after = train(trial)["after"]["greedy"]
        scores = {k: v for k, v in sorted(after.items()) if isinstance(v, (int, float)) and math.isfinite(v)}
        results.append({"mixture": dict(zip(splits, counts)), "scores": scores})
    names = sorted(set.intersection(*(set(r["scores"]) for r in results)))
    ranking, r2 = rank_mixtures([(tuple(r["mixture"][s] for s in splits), [r["scores"][n] for n in names])
                                 for r in results], batch, seed=cfg.seed)
    best = dict(zip(splits, ranking[0][0]))
    report = {"task": cfg.task, "stage": stage, "splits": splits, "batch": batch, "trial_steps": base.stages[0].steps,
              "scores": names, "trials": results, "predictor_r2": r2,
              "ranking": [{"mixture": dict(zip(splits, c)), "predicted_mean": p} for c, p in ranking[:10]],
              "best": best, "overrides": mixture_rows(stage, splits, ranking[0][0], sizes)}
    (root / "damo.json").write_text(json.dumps(report, indent=1))
    return report
