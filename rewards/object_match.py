"""``object_match``: does a generated 2x2 tile still show the described object in every view?

MRC alone is maximised by degenerate tiles (a blank or a blurred blob is easy to reconstruct), so
the multi-view task also reports this check on held-out prompts, before and after RL. Per view:
the foreground (any channel < 0.95, as MRC's crop) must cover at least ``MIN_FOREGROUND`` of the
view; each pixel is assigned to the palette colour (or grey) of nearest chromaticity (shading
scales brightness, not chromaticity). A view scores ``recall * precision``: the fraction of the
named colours that make up at least ``MIN_SHARE`` of its foreground, times the share of its
foreground in named colours (so noise, which holds every colour, scores low). Score = mean over
views, in [0, 1]: rendered objects score 0.8 on average (edges blend into the background, and a
part hidden in some views counts as missing there), noise 0.2.
"""

from __future__ import annotations

import torch

from mmpost.data.objects3d import COLORS, untile
from mmpost.rewards.mrc import FOREGROUND_THRESHOLD, as_tiles

MIN_FOREGROUND, MIN_SHARE = 0.02, 0.05


def _chromaticity(rgb: torch.Tensor) -> torch.Tensor:
    return rgb / rgb.sum(-1, keepdim=True).clamp(min=1e-6)


# the named colours plus grey last, so desaturated pixels match no colour
PALETTE = _chromaticity(torch.tensor([*COLORS.values(), (0.5, 0.5, 0.5)]))


def object_match_scores(tiles: torch.Tensor, descriptions: list[str]) -> torch.Tensor:
    """[B] scores of [B, 3, 2H, 2W] tiles in [0, 1] against their descriptions."""
    views = untile(tiles.float().clamp(0, 1))  # [B, V, 3, H, W]
    scores = torch.zeros(len(descriptions))
    for i, description in enumerate(descriptions):
        named = [j for j, colour in enumerate(COLORS) if colour in description.lower().split()]
        per_view = []
        for view in views[i]:
            pixels = view.permute(1, 2, 0).reshape(-1, 3)
            foreground = pixels[(pixels < FOREGROUND_THRESHOLD).any(-1)]
            if not named or len(foreground) < MIN_FOREGROUND * len(pixels):
                per_view.append(0.0)
                continue
            nearest = torch.cdist(_chromaticity(foreground), PALETTE).argmin(-1)
            share = torch.bincount(nearest, minlength=len(PALETTE)).float() / len(foreground)
            recall = sum(float(share[j] >= MIN_SHARE) for j in named) / len(named)
            per_view.append(recall * float(share[named].sum()))
        scores[i] = sum(per_view) / len(per_view)
    return scores


def object_match(prompts, completions, description=None, **columns) -> list[float]:
    """TRL-signature reward: tiles (tensors or PIL images) against the ``description`` column
    (the prompts when the column is absent)."""
    if not completions:
        return []
    return object_match_scores(as_tiles(completions), description or prompts).tolist()
