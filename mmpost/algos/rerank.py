"""Reranking objectives for an (M)LLM that judges a (query, candidate) pair by its next token.

"Supervised Fine-Tuning or Contrastive Learning? Towards Better Multimodal LLM Reranking"
(arXiv 2510.14824): the model reads the query and one candidate and answers "yes" or "no"; ``s_yes``
and ``s_no`` are the logits of those two tokens. For a query with one relevant candidate (index 0)
and ``K`` irrelevant ones:

* ``sft`` (pointwise): cross-entropy of the 2-way softmax over (yes, no) against the label, yes for
  the relevant pair and no for every other, summed over the query's ``1 + K`` pairs; the ranking score
  is ``s_yes - s_no`` (the log-odds of yes).
* ``contrastive`` (listwise InfoNCE): ``-log softmax(s_yes / tau)[0]`` over the query's ``1 + K``
  candidates; the ranking score is ``s_yes``.

The paper finds SFT the stronger objective (its "weight" component dominates). The formulas here
follow the paper's abstract and a third-party transcription of its method section (the authors'
``vec-ai/lychee-rerank-mm`` was not available); ``tau`` = 1 is unverified.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

OBJECTIVES = ("sft", "contrastive")


def pointwise_loss(yes: torch.Tensor, no: torch.Tensor) -> torch.Tensor:
    """SFT's loss on [Q, 1 + K] yes / no logits, the relevant candidate first: per query the sum over its
    pairs of ``-log softmax(yes, no)[label]``, averaged over queries."""
    logits = torch.stack([yes, no], dim=-1)  # [Q, 1 + K, 2]
    labels = torch.ones_like(yes, dtype=torch.long)
    labels[:, 0] = 0  # the relevant pair's answer is "yes" (index 0 of the pair), every other "no"
    per_pair = F.cross_entropy(logits.reshape(-1, 2), labels.reshape(-1), reduction="none")
    return per_pair.view_as(yes).sum(-1).mean()


def listwise_loss(yes: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """InfoNCE on [Q, 1 + K] yes logits, the relevant candidate first: ``mean_q -log softmax(yes_q / tau)[0]``."""
    return F.cross_entropy(yes / temperature, torch.zeros(yes.shape[0], dtype=torch.long, device=yes.device))


def ranking_scores(yes: torch.Tensor, no: torch.Tensor, objective: str) -> torch.Tensor:
    """The score each objective ranks candidates by (see the module docstring)."""
    return yes - no if objective == "sft" else yes


def ranking_metrics(scores: torch.Tensor) -> dict[str, float]:
    """MRR and recall@1 of the relevant candidate (index 0) among each query's [Q, 1 + K] scores; ties
    count against it."""
    rank = 1 + (scores[:, 1:] >= scores[:, :1]).sum(-1).float()
    return {"mrr": float((1 / rank).mean()), "recall@1": float((rank == 1).float().mean())}
