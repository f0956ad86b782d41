"""The nerfstudio MRC backend: dataset export always; the fit itself only where nerfstudio is installed."""

import importlib.util
import json

import numpy as np
import pytest
import torch

from mmpost.data.objects3d import fixed_cameras, object_spec, render
from mmpost.rewards.mrc_nerfstudio import NerfstudioReconstructor, write_dataset

HAS_NERFSTUDIO = importlib.util.find_spec("nerfstudio") is not None
CAMERAS = fixed_cameras(32)


def test_dataset_holds_the_views_and_known_cameras(tmp_path):
    from PIL import Image

    views = render(object_spec(0), CAMERAS)
    write_dataset(tmp_path, views, CAMERAS)
    meta = json.loads((tmp_path / "transforms.json").read_text())
    assert (meta["w"], meta["h"], meta["fl_x"]) == (32, 32, pytest.approx(CAMERAS.focal))
    assert len(meta["frames"]) == 4
    for i, frame in enumerate(meta["frames"]):
        assert torch.allclose(torch.tensor(frame["transform_matrix"]), CAMERAS.c2w[i])
        image = torch.from_numpy(np.asarray(Image.open(tmp_path / frame["file_path"]), dtype=np.float32))
        assert torch.allclose(image.permute(2, 0, 1) / 255, views[i], atol=1 / 255)


@pytest.mark.skipif(HAS_NERFSTUDIO, reason="nerfstudio is installed: the missing-extra message cannot be shown")
def test_missing_extra_names_the_install_command():
    with pytest.raises(ImportError, match=r"mmpost\[nerf\]"):
        NerfstudioReconstructor()


@pytest.mark.skipif(not HAS_NERFSTUDIO, reason="nerfstudio not installed (extra [nerf], GPU): "
                                               "scripts/gpu_check_nerf.sh runs the fit on a GPU machine")
def test_nerfacto_fit_renders_the_four_views_offline():
    views = render(object_spec(0), CAMERAS)[None]
    renders = NerfstudioReconstructor(iterations=30).fit_render(views, CAMERAS)
    assert renders.shape == views.shape and 0 <= renders.min() <= renders.max() <= 1
