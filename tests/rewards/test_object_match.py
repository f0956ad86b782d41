"""object_match: the described colours must be present in every view's foreground."""

import torch

from mmpost.data.objects3d import COLORS, fixed_cameras, object_spec, render, tile
from mmpost.rewards.object_match import object_match, object_match_scores


def _square_tile(colour: str, shade: float = 1.0, top_colour: str = "", size: int = 16) -> torch.Tensor:
    view = torch.ones(3, size, size)
    view[:, 4:12, 4:12] = torch.tensor(COLORS[colour]).view(3, 1, 1) * shade  # shading keeps chromaticity
    if top_colour:
        view[:, 4:8, 4:12] = torch.tensor(COLORS[top_colour]).view(3, 1, 1)
    return tile(view.expand(4, -1, -1, -1))


def test_by_hand():
    red = _square_tile("red", shade=0.5)
    assert object_match_scores(red[None], ["a red box"]).item() == 1.0
    assert object_match_scores(red[None], ["a blue box"]).item() == 0.0
    assert object_match_scores(red[None], ["a red box and a blue sphere"]).item() == 0.5
    blank = torch.ones_like(red)
    assert object_match_scores(blank[None], ["a red box"]).item() == 0.0  # no foreground: no object
    grey = red.mean(0, keepdim=True).expand_as(red)
    assert object_match_scores(grey[None], ["a red box"]).item() == 0.0  # desaturated: matches no colour
    half = red.clone()
    half[:, :16, 16:] = 1.0  # one view of four is empty
    assert object_match_scores(half[None], ["a red box"]).item() == 0.75
    mixed = _square_tile("red", top_colour="green")  # half of the object in a colour not named
    assert object_match_scores(mixed[None], ["a red box"]).item() == 0.5
    assert object_match_scores(mixed[None], ["a red box on a green box"]).item() == 1.0


def test_rendered_objects_match_their_own_descriptions_not_others():
    cameras = fixed_cameras(32)
    specs = [object_spec(seed) for seed in range(24)]
    tiles = torch.stack([tile(render(spec, cameras)) for spec in specs])
    own = object_match(None, list(tiles), description=[s["description"] for s in specs])
    shuffled = object_match_scores(tiles, [s["description"] for s in specs[1:] + specs[:1]])
    noise = object_match_scores(torch.rand_like(tiles), [s["description"] for s in specs])
    assert sum(own) / len(own) > 0.7 and shuffled.mean() < 0.3 and noise.mean() < 0.3
