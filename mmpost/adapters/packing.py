"""Padding-free teacher-forced forwards: a batch's rows packed into one sequence.

A padded batch computes every layer on ``B x L`` positions although only the real tokens matter
(SFT demonstrations of 15 to 75 tokens: a third of a chart2code batch is padding). Packed, the rows
are laid end to end without padding, each with its own position ids restarting at 0, and no
attention mask: transformers then attends within each row only (``find_packed_sequence_indices``:
a block-diagonal mask for SDPA and eager attention, variable-length kernels for FlashAttention). The
LM head runs only at the positions whose logits are asked for (``logits_to_keep`` as indices), and
those logits are put back into the padded layout, so callers see the same tensors as before.

Qwen2-VL-family models (multimodal RoPE) take ``[4, 1, N]`` position ids: the text positions (which
tell transformers where rows start) above the three rotary axes of each token, computed on the padded
batch by the model's own ``get_rope_index``.
"""

from __future__ import annotations

import torch

from mmpost.adapters.shared_media import ROW_KEYS

TOKEN_KEYS = ROW_KEYS - {"attention_mask"}  # one entry per token: packed with the tokens


def pack(inputs: dict, positions: torch.Tensor, keep: int) -> tuple[dict, torch.Tensor]:
    """``inputs`` (the model's padded inputs: [B, L] token tensors and media) packed into one row.

    ``positions``: [B, L] text positions, or [4, B, L] (text, then the three rotary axes). Returns the
    packed inputs (``position_ids`` set, no ``attention_mask``) and ``window``: [B, keep], for each of
    the last ``keep`` padded positions of each row, its index in the packed row (-1 at padding)."""
    mask = inputs["attention_mask"].bool()
    rows, length = mask.shape
    packed = {key: value[mask].unsqueeze(0) if key in TOKEN_KEYS else value
              for key, value in inputs.items() if key != "attention_mask"}
    packed["position_ids"] = positions[..., mask].unsqueeze(-2)  # [1, N] or [4, 1, N]
    index = torch.full((rows, length), -1, dtype=torch.long, device=mask.device)
    index[mask] = torch.arange(int(mask.sum()), device=mask.device)
    return packed, index[:, length - keep:]


def kept_positions(window: torch.Tensor) -> torch.Tensor:
    """The packed positions whose logits the window asks for, in packed order (``logits_to_keep``)."""
    return window[window >= 0]


def unpack_logits(logits: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """[1, K, V] logits at :func:`kept_positions` -> [B, keep, V] in the padded layout (0 at padding)."""
    valid = window >= 0
    out = logits.new_zeros(*window.shape, logits.shape[-1])
    out[valid] = logits[0]
    return out
