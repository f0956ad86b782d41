"""Packing a padded batch into one row and putting the logits back, on hand-made inputs."""

import torch

from mmpost.adapters.packing import kept_positions, pack, unpack_logits


def test_pack_drops_padding_restarts_positions_and_unpacks_the_window():
    ids = torch.tensor([[0, 5, 6, 0], [7, 8, 9, 4]])  # row 0: left pad, 5 6, then a right pad
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]])
    pixels = torch.ones(3, 2)  # media pass through untouched
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    packed, window = pack({"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}, positions, keep=3)
    assert "attention_mask" not in packed and packed["pixel_values"] is pixels
    assert packed["input_ids"].tolist() == [[5, 6, 7, 8, 9, 4]]
    assert packed["position_ids"].tolist() == [[0, 1, 0, 1, 2, 3]]  # each row restarts at 0
    assert window.tolist() == [[0, 1, -1], [3, 4, 5]]  # the last 3 padded positions of each row
    assert kept_positions(window).tolist() == [0, 1, 3, 4, 5]
    logits = torch.arange(5.0).view(1, 5, 1).expand(1, 5, 2)
    assert unpack_logits(logits, window)[..., 0].tolist() == [[0.0, 1.0, 0.0], [2.0, 3.0, 4.0]]


def test_multimodal_positions_pack_as_four_rows():
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    text = (mask.cumsum(-1) - 1).clamp(min=0)
    rope = torch.stack([text + 10, text + 20, text + 30])
    packed, _ = pack({"input_ids": torch.zeros(2, 3, dtype=torch.long), "attention_mask": mask},
                     torch.cat([text[None], rope]), keep=1)
    assert packed["position_ids"].shape == (4, 1, 5)
    assert packed["position_ids"][:, 0].tolist() == [[0, 1, 0, 1, 2], [10, 11, 10, 11, 12],
                                                      [20, 21, 20, 21, 22], [30, 31, 30, 31, 32]]
