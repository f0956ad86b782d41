"""Carve3D's MRC reward on procedural objects: consistent views beat every perturbation, the crop
follows Carve3D, and the voxel reconstructor is deterministic."""

import torch

from mmpost.data.objects3d import fixed_cameras, object_spec, render, tile
from mmpost.rewards.mrc import VoxelReconstructor, foreground_crop, mrc, mrc_scores, ssim
from mmpost.tools.bench.mrc import perturbations

CAMERAS = fixed_cameras(32)
VIEWS = torch.stack([render(object_spec(s), CAMERAS) for s in range(4)])  # [4 objects, 4 views, 3, 32, 32]


def perturbed() -> dict[str, torch.Tensor]:
    return {name: views for name, views in perturbations(VIEWS).items() if name != "consistent"}


def test_consistent_views_beat_every_perturbation():
    reconstructor = VoxelReconstructor()
    consistent = mrc_scores(tile(VIEWS), reconstructor)
    for name, views in perturbed().items():
        scores = mrc_scores(tile(views), reconstructor)
        margin = consistent - scores
        assert (margin > 0).all(), f"{name}: {margin.tolist()}"  # for every object, paired
        assert margin.mean() > 0.008, f"{name}: mean margin {margin.mean():.4f}"


def test_voxel_reconstructor_is_deterministic_under_a_seed():
    a = mrc_scores(tile(VIEWS[:2]), VoxelReconstructor(seed=3, steps=10))
    b = mrc_scores(tile(VIEWS[:2]), VoxelReconstructor(seed=3, steps=10))
    assert torch.equal(a, b)


def test_crop_is_carve3d_square_padded_box():
    generated = torch.ones(3, 32, 32)
    generated[:, 10:14, 4:20] = 0.2  # a 4 x 16 object
    rendered = torch.rand(3, 32, 32)
    crop_g, crop_r = foreground_crop(generated, rendered)
    assert crop_g.shape == crop_r.shape == (3, 32, 32)
    # the square box (16 + 2 px padding) keeps the object centred: white rows above and below it
    assert crop_g[:, 0].min() > 0.9 and crop_g[:, -1].min() > 0.9 and crop_g[:, 16, 4:28].max() < 0.5
    blank = torch.ones(3, 32, 32)
    assert torch.allclose(foreground_crop(blank, rendered)[1], rendered.clamp(0, 1), atol=1e-5)


def test_ssim_and_trl_signature():
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(ssim(x, x), torch.ones(2))
    assert (ssim(x, torch.rand(2, 3, 16, 16)) < 0.5).all()
    rewards = mrc(prompts=["a", "b"], completions=[tile(VIEWS[0]), tile(VIEWS[1])])
    assert len(rewards) == 2 and all(-1 < r < 0 for r in rewards)


def test_empty_batch_scores_nothing():
    assert mrc(prompts=[], completions=[]) == []
