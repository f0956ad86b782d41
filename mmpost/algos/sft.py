"""Supervised term: negative log-likelihood of demonstrations, masked to the demonstrated steps."""

from __future__ import annotations

import torch

from mmpost.algos.pg import aggregate


def nll_loss(logprobs: torch.Tensor, mask: torch.Tensor, aggregation: str = "token_mean") -> torch.Tensor:
    """``-mean log p(demo step)`` over real steps ([N, T] inputs); prompt tokens are not in ``mask``."""
    return aggregate(-logprobs, mask, aggregation)
