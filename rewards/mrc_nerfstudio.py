"""MRC with nerfstudio as the reconstructor: per tile, the four views are written as a nerfstudio
dataset (``transforms.json`` with the known cameras), nerfacto (or splatfacto, CUDA only) is fitted
with a white background and camera optimisation off, and the fitted field is rendered at the same
four cameras; the crop and distance are the voxel backend's.

Where nerfstudio runs: installed in this environment (``pip install 'mmpost[nerf]'``, GPU machines),
or in the private environment ``mmpost setup nerfstudio`` makes (:mod:`mmpost.private_env`:
nerfstudio pins timm 0.6, protobuf 3.20 and more, which this environment must not get); then each
fit runs in a process of that interpreter. Without CUDA, nerfacto uses its pure-torch hash encoding
and a small configuration (:data:`CPU_MODEL`: fewer hash levels, a smaller table, fewer rays and
samples), which a CPU fits in minutes.

nerfstudio's models build an LPIPS metric at construction whose AlexNet weights are a download;
it is only used for nerfstudio's own evaluation metrics, so :func:`_offline_lpips` replaces it by
a stand-in before any model is built and the backend works offline. Select it with
``--set rewards=mrc_nerfstudio`` (or construct :class:`NerfstudioReconstructor` yourself).
"""

from __future__ import annotations

import importlib.util
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from mmpost.data.objects3d import Cameras
from mmpost.private_env import PrivateEnv
from mmpost.rewards.mrc import as_tiles, mrc_scores

ENV = PrivateEnv("nerfstudio", ["nerfstudio==1.1.5"])
INSTALL_HINT = ("the nerfstudio MRC backend needs nerfstudio: run `mmpost setup nerfstudio` (a private environment "
                "beside this one), or pip install 'mmpost[nerf]' on a GPU machine (pin torch to your CUDA build "
                "first, nerfstudio's own pins would otherwise replace it)")
# nerfacto without CUDA: the pure-torch hash grid, sized so that a 2-core CPU fits 32-64 px views in minutes.
CPU_MODEL = {"implementation": "torch", "num_levels": 4, "log2_hashmap_size": 12, "max_res": 256, "hidden_dim": 32,
             "num_proposal_samples_per_ray": (32, 16), "num_nerf_samples_per_ray": 16, "proposal_warmup": 100,
             "proposal_weights_anneal_max_num_iters": 100, "use_appearance_embedding": False,
             "proposal_net_args_list": [{"hidden_dim": 16, "log2_hashmap_size": 10, "num_levels": 4, "max_res": 64,
                                         "use_linear": False}] * 2}
CPU_RAYS = 256


def _where_nerfstudio() -> str | None:
    """None to fit in this process, else the private environment's Python; raises when neither has it."""
    python = ENV.python_for("nerfstudio")
    if python is None and importlib.util.find_spec("nerfstudio") is None:
        raise ImportError(INSTALL_HINT)
    return python


class _NoViewDirection(torch.nn.Module):
    """In place of nerfacto's view-direction encoding: zeros of its width, so colour depends on the
    point alone. Carve3D's reconstructor (Instant3D's LRM) decodes colour without the view direction;
    with four views a view-dependent colour can paint each view's own version of a surface and
    absorb exactly the disagreement MRC must measure."""

    def __init__(self, width: int):
        super().__init__()
        self.width = width

    def get_out_dim(self) -> int:
        return self.width

    def forward(self, directions: torch.Tensor) -> torch.Tensor:
        return directions.new_zeros(*directions.shape[:-1], self.width)


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
    ``iterations`` per object, rendered back at the training cameras. ``small`` (default: without
    CUDA) uses :data:`CPU_MODEL`; ``seed`` makes a fit repeatable."""

    def __init__(self, method: str = "nerfacto", iterations: int = 2000, small: bool | None = None, seed: int = 0):
        self.python = _where_nerfstudio()
        if method not in ("nerfacto", "splatfacto"):
            raise ValueError(f"method must be 'nerfacto' or 'splatfacto', got {method!r}")
        self.method, self.iterations, self.seed = method, iterations, seed
        self.small = not torch.cuda.is_available() if small is None else small

    def _fit_one(self, views: torch.Tensor, cameras: Cameras, workdir: Path) -> torch.Tensor:
        if self.python:  # in the private environment: this process never imports nerfstudio
            torch.save({"views": views, "cameras": cameras, "method": self.method, "iterations": self.iterations,
                        "small": self.small, "seed": self.seed}, workdir / "job.pt")
            done = subprocess.run([self.python, "-m", "mmpost.rewards.mrc_nerfstudio", str(workdir)],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"nerfstudio fit failed in {self.python}: {done.stderr.strip()[-2000:]}")
            return torch.load(workdir / "renders.pt")
        return fit(views, cameras, workdir, self.method, self.iterations, self.small, self.seed)

    def fit_render(self, views: torch.Tensor, cameras: Cameras) -> torch.Tensor:
        out = []
        for object_views in views:
            with tempfile.TemporaryDirectory(prefix="mmpost-nerf-") as workdir:
                out.append(self._fit_one(object_views, cameras, Path(workdir)))
        return torch.stack(out)


def fit(views: torch.Tensor, cameras: Cameras, workdir: Path, method: str, iterations: int, small: bool,
        seed: int) -> torch.Tensor:
    """One nerfstudio fit to ``views`` [V, 3, H, W] at ``cameras``; its renders there, [V, 3, H, W]."""
    from nerfstudio.configs.method_configs import method_configs
    from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig
    from nerfstudio.engine.trainer import Trainer

    _offline_lpips()
    write_dataset(workdir / "data", views, cameras)
    random.seed(seed)  # as nerfstudio's own train script does before a fit (its Trainer does not)
    np.random.seed(seed)
    torch.manual_seed(seed)
    config = method_configs[method]
    config.machine.seed = seed
    config.machine.device_type = "cuda" if torch.cuda.is_available() else "cpu"
    config.data = config.pipeline.datamanager.data = workdir / "data"  # nerfstudio's train script copies it there
    config.output_dir = workdir / "outputs"
    config.vis = "tensorboard"  # no viewer server
    config.viewer.quit_on_train_completion = True
    config.max_num_iterations = iterations
    config.steps_per_save = iterations + 1
    config.steps_per_eval_batch = config.steps_per_eval_image = config.steps_per_eval_all_images = 10**9
    config.mixed_precision = config.mixed_precision and torch.cuda.is_available()
    config.pipeline.model.background_color = "white"
    # One process draws the rays, from the seeded generator: nerfacto's default ParallelDataManager
    # draws them in worker processes of their own (unseeded), so two fits of the same views differed.
    parallel = config.pipeline.datamanager
    config.pipeline.datamanager = VanillaDataManagerConfig(dataparser=parallel.dataparser,
                                                           train_num_rays_per_batch=parallel.train_num_rays_per_batch,
                                                           eval_num_rays_per_batch=parallel.eval_num_rays_per_batch)
    if small:
        for key, value in CPU_MODEL.items():
            setattr(config.pipeline.model, key, value)
        config.pipeline.datamanager.train_num_rays_per_batch = config.pipeline.datamanager.eval_num_rays_per_batch = CPU_RAYS
    parser = config.pipeline.datamanager.dataparser
    parser.data = workdir / "data"
    parser.eval_mode = "all"  # every view is a training view
    parser.orientation_method, parser.center_method, parser.auto_scale_poses = "none", "none", False
    parser.scale_factor = 1.0 / 1.5  # the object fits in [-1, 1]^3; nerfacto's scene box is [-1, 1]^3 too
    for owner in (config.pipeline.model, config.pipeline.datamanager):  # its place moved across versions
        if getattr(owner, "camera_optimizer", None) is not None:
            owner.camera_optimizer.mode = "off"
    trainer = Trainer(config, local_rank=0, world_size=1)
    trainer.setup()
    if method == "nerfacto":  # splatfacto has no field
        field = trainer.pipeline.model.field
        field.direction_encoding = _NoViewDirection(field.direction_encoding.get_out_dim())
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


def mrc_nerfstudio(prompts, completions, **columns) -> list[float]:
    """TRL-signature MRC reward with the nerfstudio (nerfacto) reconstructor."""
    if not completions:
        return []
    tiles = as_tiles(completions)
    return mrc_scores(tiles, NerfstudioReconstructor()).tolist()



if __name__ == "__main__":  # one fit in the private environment: python -m mmpost.rewards.mrc_nerfstudio WORKDIR
    workdir = Path(sys.argv[1])
    job = torch.load(workdir / "job.pt", weights_only=False)  # written by NerfstudioReconstructor just now
    # A process of its own, so this changes nothing else: the same views give the same reward
    # (the hash grid's scatter-adds are otherwise not repeatable on CPU).
    torch.use_deterministic_algorithms(True, warn_only=True)
    renders = fit(job["views"], job["cameras"], workdir, job["method"], job["iterations"], job["small"], job["seed"])
    torch.save(renders, workdir / "renders.pt")
