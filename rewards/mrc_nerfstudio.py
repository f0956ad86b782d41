"""MRC with nerfstudio as the reconstructor (extra ``[nerf]``, meant for a GPU): per tile, the four
views are written as a nerfstudio dataset (``transforms.json`` with the known cameras), nerfacto
(or splatfacto) is fitted with a white background and camera optimisation off, and the fitted
field is rendered at the same four cameras; the crop and distance are the voxel backend's.

nerfstudio's models build an LPIPS metric at construction whose AlexNet weights are a download;
it is only used for nerfstudio's own evaluation metrics, so :func:`_offline_lpips` replaces it by
a stand-in before any model is built and the backend works offline. Select it with
``--set rewards=mrc_nerfstudio`` (or construct :class:`NerfstudioReconstructor` yourself).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from mmpost.data.objects3d import Cameras
from mmpost.rewards.mrc import as_tiles, mrc_scores

INSTALL_HINT = ("the nerfstudio MRC backend needs nerfstudio: pip install 'mmpost[nerf]' (on a GPU machine; pin torch "
                "to your CUDA build first, nerfstudio's own pins would otherwise replace it)")


def _require_nerfstudio():
    try:
        import nerfstudio  # noqa: F401
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error


class _NoLPIPS(torch.nn.Module):
    """Stands in for torchmetrics' LPIPS (nerfstudio evaluation metrics only): no weights download."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, a, b):
        return torch.zeros((), device=a.device)


def _offline_lpips() -> None:
    import importlib

    import torchmetrics.image.lpip as lpip

    lpip.LearnedPerceptualImagePatchSimilarity = _NoLPIPS
    for name in ("nerfstudio.models.nerfacto", "nerfstudio.models.splatfacto", "nerfstudio.models.base_model"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "LearnedPerceptualImagePatchSimilarity"):
            module.LearnedPerceptualImagePatchSimilarity = _NoLPIPS


def write_dataset(directory: Path, views: torch.Tensor, cameras: Cameras) -> None:
    """A nerfstudio dataset: ``views`` [V, 3, H, W] in [0, 1] as PNGs plus ``transforms.json``
    (OpenGL camera-to-world poses, as nerfstudio expects)."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    size = cameras.size
    frames = []
    for i, view in enumerate(views):
        name = f"view_{i}.png"
        Image.fromarray((view.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()).save(directory / name)
        frames.append({"file_path": name, "transform_matrix": cameras.c2w[i].tolist()})
    (directory / "transforms.json").write_text(json.dumps({
        "camera_model": "OPENCV", "fl_x": cameras.focal, "fl_y": cameras.focal, "cx": size / 2, "cy": size / 2,
        "w": size, "h": size, "frames": frames}, indent=1))


class NerfstudioReconstructor:
    """``fit_render`` through nerfstudio: one ``method`` fit ("nerfacto" or "splatfacto") of
    ``iterations`` per object, rendered back at the training cameras."""

    def __init__(self, method: str = "nerfacto", iterations: int = 2000):
        _require_nerfstudio()
        if method not in ("nerfacto", "splatfacto"):
            raise ValueError(f"method must be 'nerfacto' or 'splatfacto', got {method!r}")
        self.method, self.iterations = method, iterations

    def _fit_one(self, views: torch.Tensor, cameras: Cameras, workdir: Path) -> torch.Tensor:
        from nerfstudio.configs.method_configs import method_configs
        from nerfstudio.engine.trainer import Trainer

        _offline_lpips()
        write_dataset(workdir / "data", views, cameras)
        config = method_configs[self.method]
        config.data = workdir / "data"
        config.output_dir = workdir / "outputs"
        config.vis = "tensorboard"  # no viewer server
        config.viewer.quit_on_train_completion = True
        config.max_num_iterations = self.iterations
        config.steps_per_save = self.iterations + 1
        config.steps_per_eval_batch = config.steps_per_eval_image = config.steps_per_eval_all_images = 10**9
        config.pipeline.model.background_color = "white"
        parser = config.pipeline.datamanager.dataparser
        parser.eval_mode = "all"  # every view is a training view
        parser.orientation_method, parser.center_method, parser.auto_scale_poses = "none", "none", False
        parser.scale_factor = 1.0 / 1.5  # the object fits in [-1, 1]^3; nerfacto's scene box is [-1, 1]^3 too
        for owner in (config.pipeline.model, config.pipeline.datamanager):  # its place moved across versions
            if getattr(owner, "camera_optimizer", None) is not None:
                owner.camera_optimizer.mode = "off"
        trainer = Trainer(config, local_rank=0, world_size=1 if torch.cuda.is_available() else 0)
        trainer.setup()
        trainer.train()
        pipeline = trainer.pipeline
        pipeline.eval()
        train_cameras = pipeline.datamanager.train_dataset.cameras.to(pipeline.device)
        renders = []
        with torch.no_grad():
            for i in range(len(views)):
                rgb = pipeline.model.get_outputs_for_camera(train_cameras[i:i + 1])["rgb"]  # [H, W, 3]
                renders.append(rgb.permute(2, 0, 1).float().cpu())
        return torch.stack(renders).clamp(0, 1)

    def fit_render(self, views: torch.Tensor, cameras: Cameras) -> torch.Tensor:
        out = []
        for object_views in views:
            with tempfile.TemporaryDirectory(prefix="mmpost-nerf-") as workdir:
                out.append(self._fit_one(object_views, cameras, Path(workdir)))
        return torch.stack(out)


def mrc_nerfstudio(prompts, completions, **columns) -> list[float]:
    """TRL-signature MRC reward with the nerfstudio (nerfacto) reconstructor."""
    if not completions:
        return []
    tiles = as_tiles(completions)
    return mrc_scores(tiles, NerfstudioReconstructor()).tolist()

