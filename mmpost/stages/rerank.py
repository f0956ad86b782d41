"""The ``rerank`` stage: the policy learns to judge whether a candidate answers a query (yes / no).

Each step takes a batch of the stage's rows as queries; a query's relevant candidate is its own
demonstration (``completion``) and ``rerank.negatives`` others are demonstrations of other rows,
drawn with the checkpointed torch RNG. The pair is shown as the query's prompt (its media too), the
candidate as the assistant's turn, then :data:`QUESTION`; the loss is the section's objective on the
logits of the first tokens of "yes" and "no" (:mod:`mmpost.algos.rerank`). The held-out evaluation
of a run with a rerank stage adds ``rerank/mrr`` and ``rerank/recall@1`` on the same construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmpost.algos.rerank import OBJECTIVES, listwise_loss, pointwise_loss, ranking_metrics, ranking_scores
from mmpost.policy import NextTokenChoice
from mmpost.registry import check_choice
from mmpost.stages.context import StageContext
from mmpost.types import StageSection

QUESTION = "Does this answer the request above? Answer yes or no."
WORDS = ("yes", "no")


@dataclass
class Rerank(StageSection):
    """A ``rerank`` stage's objective (``rerank.rerank.objective=contrastive``)."""

    objective: str = "sft"  # "sft" (pointwise yes/no cross-entropy) | "contrastive" (InfoNCE on the yes logit)
    negatives: int = 3  # irrelevant candidates per query (other rows' demonstrations)
    temperature: float = 1.0  # contrastive: InfoNCE temperature

    def __post_init__(self):
        check_choice("rerank.objective", self.objective, OBJECTIVES)
        if self.negatives < 1 or self.temperature <= 0:
            raise ValueError(f"rerank needs negatives >= 1 and temperature > 0, got {self.negatives}, {self.temperature}")

    def requires(self, stage) -> list[tuple[type, str]]:
        return [(NextTokenChoice, "kind=rerank")] if stage.kind == "rerank" else []


def pair(query: dict, candidate: str) -> dict:
    """The row the model judges: the query's prompt and media, the candidate as its answer, the question."""
    return {**query, "prompt": [*query["prompt"], {"role": "assistant", "content": candidate},
                                {"role": "user", "content": QUESTION}]}


def candidate_rows(queries: list[dict], pool: list[dict], negatives: int, generator=None) -> list[dict]:
    """For each query, its own demonstration then ``negatives`` others drawn from ``pool`` (a different
    text), as ``len(queries) * (1 + negatives)`` pairs, query-major."""
    rows = []
    for query in queries:
        others = []
        while len(others) < negatives:
            candidate = pool[int(torch.randint(len(pool), (), generator=generator))]["completion"]
            if candidate != query["completion"]:
                others.append(candidate)
        rows += [pair(query, c) for c in (query["completion"], *others)]
    return rows


def yes_no_logits(policy, rows: list[dict], queries: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[Q, 1 + K] logits of "yes" and of "no" after each pair."""
    logits = policy.choice_logits(rows, WORDS).float().view(queries, -1, len(WORDS))
    return logits[..., 0], logits[..., 1]


def rerank_loss(policy, queries: list[dict], pool: list[dict], terms: Rerank, generator=None):
    yes, no = yes_no_logits(policy, candidate_rows(queries, pool, terms.negatives, generator), len(queries))
    loss = pointwise_loss(yes, no) if terms.objective == "sft" else listwise_loss(yes, terms.temperature)
    return loss, ranking_metrics(ranking_scores(yes.detach(), no.detach(), terms.objective))


def rerank_step(ctx: StageContext, indices: list[int]) -> dict[str, float]:
    """One optimiser step of the stage's objective on the queries ``indices``."""
    with ctx.accelerator.autocast():
        loss, metrics = rerank_loss(ctx.policy, ctx.batch(indices), ctx.rows, ctx.stage.rerank)
    return {"grad_norm": ctx.update(loss), "loss/rerank": loss.item(),
            **{f"rerank/train_{k}": v for k, v in metrics.items()}}


@torch.no_grad()
def rerank_evaluation(policy, rows: list[dict], terms: Rerank, seed: int, batch_size: int = 16) -> dict[str, float]:
    """MRR and recall@1 on held-out queries, each against the same seeded negatives from the held-out rows."""
    generator = torch.Generator().manual_seed(seed)
    scores = []
    for start in range(0, len(rows), batch_size):
        queries = rows[start:start + batch_size]
        yes, no = yes_no_logits(policy, candidate_rows(queries, rows, terms.negatives, generator), len(queries))
        scores.append(ranking_scores(yes, no, terms.objective))
    return {f"rerank/{k}": v for k, v in ranking_metrics(torch.cat(scores)).items()}
