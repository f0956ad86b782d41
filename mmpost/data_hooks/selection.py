"""Online data selection: choose a step's batch from a larger pool of rows (UDS).

UDS (utility x diversity, ``gfyddha/UDS`` ``UDSamplingTrainer.py``): each candidate's utility is the
nuclear norm of its [T, V] logit matrix on the demonstration (a forward without gradient); its
diversity is the mean L2 distance of a low-dimensional sketch of those logits to a FIFO queue of
the sketches of previously selected samples (0 while the queue is empty); the top ``k`` by
``utility + alpha * diversity`` are trained on and their sketches enter the queue.

The sketch differs from UDS's fast Johnson-Lindenstrauss transform (random-sign FFT over the
zero-padded flattened logits): here each position's logits are projected to ``width`` dimensions by
a seeded Gaussian matrix and the positions are averaged in ``chunks`` contiguous groups, which keeps
memory at ``V x width`` for any sequence length.
"""

from __future__ import annotations

import torch


def sketch(logits: torch.Tensor, mask: torch.Tensor, chunks: int = 8, width: int = 128, seed: int = 0) -> torch.Tensor:
    """[B, chunks * width] sketch of each sample's real-position logits [B, T, V]."""
    gen = torch.Generator().manual_seed(seed)
    projection = torch.randn(logits.shape[-1], width, generator=gen).to(logits.device) / width ** 0.5
    projected = torch.nan_to_num(logits.float(), neginf=0.0) @ projection  # [B, T, width]
    out = []
    for row, m in zip(projected, mask):
        real = row[m.bool()]
        parts = torch.tensor_split(real, chunks) if len(real) >= chunks else [real] * chunks
        out.append(torch.cat([p.mean(0) if len(p) else torch.zeros(width, device=row.device) for p in parts]))
    return torch.stack(out)


def uds_scores(logits: torch.Tensor, mask: torch.Tensor, queue: torch.Tensor | None,
               alpha: float = 2.5e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores [B], sketches [B, D]): nuclear norm of each sample's real-position logits plus
    ``alpha`` times the mean distance of its sketch to ``queue`` ([Q, D], or None when empty)."""
    utility = torch.stack([torch.linalg.matrix_norm(torch.nan_to_num(row[m.bool()].float(), neginf=0.0), ord="nuc")
                           for row, m in zip(logits, mask)])
    sketches = sketch(logits, mask)
    if queue is None or len(queue) == 0:
        return utility, sketches
    diversity = torch.cdist(sketches, queue.to(sketches.device)).mean(-1)
    return utility + alpha * diversity, sketches


def uds_select(logits: torch.Tensor, mask: torch.Tensor, k: int, queue: torch.Tensor | None,
               alpha: float = 2.5e-3, queue_size: int = 1024) -> tuple[list[int], torch.Tensor]:
    """Indices of the ``k`` best-scoring candidates and the updated FIFO queue of sketches."""
    scores, sketches = uds_scores(logits, mask, queue, alpha)
    chosen = torch.topk(scores, min(k, len(scores))).indices
    selected = sketches[chosen].cpu()
    queue = selected if queue is None or len(queue) == 0 else torch.cat([queue, selected])[-queue_size:]
    return sorted(chosen.tolist()), queue
