"""UDS online batch selection against its definition on hand-made logits."""

import torch

from mmpost.data_hooks.selection import sketch, uds_scores, uds_select


def test_utility_is_the_nuclear_norm_of_the_real_positions():
    logits = torch.zeros(2, 3, 4)
    logits[0, 0, 0], logits[0, 1, 1] = 3.0, 4.0  # singular values 3 and 4 -> 7
    logits[1, 0, 0], logits[1, 2, 0] = 1.0, 100.0  # position 2 is padding
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    scores, _ = uds_scores(logits, mask, None)
    assert torch.allclose(scores, torch.tensor([7.0, 1.0]))


def test_diversity_prefers_rows_far_from_the_queue():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 6)
    logits[1] = logits[0]  # same utility as row 0
    mask = torch.ones(3, 4)
    queue = sketch(logits[:1], mask[:1])  # row 0 was just selected
    scores, sketches = uds_scores(logits, mask, queue, alpha=1.0)
    utility, _ = uds_scores(logits, mask, None)
    distance = torch.cdist(sketches, queue).mean(-1)
    assert torch.allclose(scores, utility + distance)
    chosen, new_queue = uds_select(logits, mask, 2, queue, alpha=1.0, queue_size=2)
    assert len(chosen) == 2 and len(new_queue) == 2  # FIFO capped at queue_size
