"""The procedural 3D objects: rendered views, tiling, seeded specs, held-out colour/shape pairs."""

import torch

from mmpost.data.objects3d import fixed_cameras, object_spec, render, tile, untile

CAMERAS = fixed_cameras(32)
VIEWS = torch.stack([render(object_spec(s), CAMERAS) for s in range(4)])  # [4 objects, 4 views, 3, 32, 32]


def test_renderer_views_and_tiling():
    assert VIEWS.shape == (4, 4, 3, 32, 32) and VIEWS.min() >= 0 and VIEWS.max() <= 1
    assert torch.allclose(VIEWS[..., 0, 0], torch.ones(4, 4, 3), atol=1e-3)  # white background corners
    assert (VIEWS[:, 0] - VIEWS[:, 2]).abs().mean() > 0.01  # opposite cameras see different images
    assert torch.equal(untile(tile(VIEWS)), VIEWS)
    assert object_spec(3) == object_spec(3)
    unseen = {("sphere", "purple"), ("box", "orange"), ("cylinder", "yellow")}
    ood = {(p["shape"], p["color"]) for s in range(20_000_000, 20_000_050) for p in object_spec(s)["parts"][:1]}
    train = {(p["shape"], p["color"]) for s in range(200) for p in object_spec(s)["parts"]}
    heldout = {(p["shape"], p["color"]) for s in range(10_000_000, 10_000_050) for p in object_spec(s)["parts"]}
    assert ood == unseen and not ood & train  # the ood split's first parts: only never-trained pairs
    assert not heldout & unseen  # held-out objects are drawn as training objects are
