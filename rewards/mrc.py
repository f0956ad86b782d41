"""Carve3D's multi-view reconstruction consistency (MRC) reward.

A 2x2 tile of four views at known cameras is split into views, a radiance field is fitted to
them, re-rendered at the *same* cameras, and each generated view is compared with its
re-rendering on the generated view's square foreground box; reward = -mean distance over views.
Views of one consistent 3D object are reproduced well by a single field; views that disagree
(shifted, flipped, recoloured, of different objects) are not.

Crop as Carve3D ``rewards.py::compute_mrc_reward``: foreground = any channel < 0.95, the box made
square and padded (5 px at Carve3D's 512 px views, scaled to the view size here), the same box
cropped from both images, bicubic-resized back to the view size, clamped to [0, 1]. Distance:
Carve3D uses LPIPS-AlexNet, whose backbone weights are a download; the offline default here is
``0.5 * (1 - SSIM_7x7) + 2.5 * L1`` (per shared/reference/diffusion_mrc.md, which measured it
separating every perturbation from consistent views).

Reconstructors share ``fit_render(views [B, V, 3, H, W], cameras) -> renders [B, V, 3, H, W]``;
:class:`VoxelReconstructor` is the pure-torch CPU default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmpost.data.objects3d import DISTANCE, Cameras, composite, fixed_cameras, untile

FOREGROUND_THRESHOLD = 0.95
CARVE3D_PAD, CARVE3D_VIEW = 5, 512


class VoxelReconstructor:
    """A ``grid``^3 RGB + density voxel field in [-1, 1]^3 fitted by Adam to the views (view-
    independent colour, total-variation regularised), rendered by the same compositing as the
    data renderer. Deterministic given ``seed``."""

    def __init__(self, grid: int = 16, steps: int = 40, samples: int = 32, lr: float = 0.2, tv: float = 1e-3,
                 seed: int = 0):
        self.grid, self.steps, self.samples, self.lr, self.tv, self.seed = grid, steps, samples, lr, tv, seed

    def _render(self, field: torch.Tensor, points: torch.Tensor, step: float) -> torch.Tensor:
        b, v, r, s, _ = points.shape
        values = F.grid_sample(field, points.reshape(b, 1, 1, -1, 3), align_corners=True)  # [B, 4, 1, 1, N]
        values = values.reshape(b, 4, v, r, s).permute(0, 2, 3, 4, 1)
        inside = (points.abs() <= 1).all(-1)
        density = F.softplus(values[..., 0] - 2.0) * 30.0 * inside
        return composite(density, torch.sigmoid(values[..., 1:]), step)

    def fit_render(self, views: torch.Tensor, cameras: Cameras) -> torch.Tensor:
        b, v, _, h, w = views.shape
        origins, directions = cameras.rays()
        t = torch.linspace(DISTANCE - 1.8, DISTANCE + 1.8, self.samples)
        points = (origins[..., None, :] + directions[..., None, :] * t[:, None]).expand(b, -1, -1, -1, -1)
        target = views.permute(0, 1, 3, 4, 2).reshape(b, v, h * w, 3)
        generator = torch.Generator().manual_seed(self.seed)
        field = (0.01 * torch.randn(b, 4, self.grid, self.grid, self.grid, generator=generator)).requires_grad_(True)
        optimizer = torch.optim.Adam([field], lr=self.lr)
        step = float(t[1] - t[0])
        with torch.enable_grad():
            for _ in range(self.steps):
                loss = F.mse_loss(self._render(field, points, step), target)
                tv = sum((field.diff(dim=d) ** 2).mean() for d in (2, 3, 4))
                optimizer.zero_grad()
                (loss + self.tv * tv).backward()
                optimizer.step()
        with torch.no_grad():
            out = self._render(field, points, step)
        return out.reshape(b, v, h, w, 3).permute(0, 1, 4, 2, 3).clamp(0, 1)


def foreground_crop(generated: torch.Tensor, rendered: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Carve3D's crop: the generated view's square, padded foreground box cut from both
    [3, H, W] images and resized back to H x W (the whole image when there is no foreground)."""
    _, h, w = generated.shape
    mask = (generated < FOREGROUND_THRESHOLD).any(0)
    if mask.any():
        rows, cols = mask.any(1).nonzero().squeeze(1), mask.any(0).nonzero().squeeze(1)
        top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        side = max(bottom - top, right - left)
        pad = max(1, round(CARVE3D_PAD * h / CARVE3D_VIEW))
        cy, cx = (top + bottom) / 2, (left + right) / 2
        top, left = int(round(cy - side / 2)) - pad, int(round(cx - side / 2)) - pad
        bottom, right = top + side + 2 * pad, left + side + 2 * pad
        top, left, bottom, right = max(0, top), max(0, left), min(h, bottom), min(w, right)
    else:
        top, left, bottom, right = 0, 0, h, w
    crops = [F.interpolate(img[None, :, top:bottom, left:right], size=(h, w), mode="bicubic", antialias=True,
                           align_corners=False)[0].clamp(0, 1) for img in (generated, rendered)]
    return crops[0], crops[1]


def _gaussian_window(size: int = 7, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-x**2 / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(3, 1, size, size)


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 7) -> torch.Tensor:
    """Mean SSIM of [N, 3, H, W] images in [0, 1] (Gaussian 7x7 window, sigma 1.5, valid region)."""
    kernel = _gaussian_window(window).to(a)
    blur = lambda x: F.conv2d(x, kernel, groups=3)  # noqa: E731
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    value = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return value.mean(dim=(1, 2, 3))


def view_distance(generated: torch.Tensor, rendered: torch.Tensor) -> torch.Tensor:
    """[N] offline default distance: ``0.5 (1 - SSIM) + 2.5 L1`` on cropped views."""
    return 0.5 * (1 - ssim(generated, rendered)) + 2.5 * (generated - rendered).abs().mean(dim=(1, 2, 3))


def mrc_scores(tiles: torch.Tensor, reconstructor=None, cameras: Cameras | None = None) -> torch.Tensor:
    """[B] MRC rewards (-mean view distance) of [B, 3, 2H, 2W] tiles in [0, 1]."""
    views = untile(tiles.float().clamp(0, 1))
    b, v, _, h, _ = views.shape
    cameras = cameras or fixed_cameras(h)
    renders = (reconstructor or VoxelReconstructor()).fit_render(views, cameras)
    pairs = [foreground_crop(views[i, j], renders[i, j]) for i in range(b) for j in range(v)]
    distance = view_distance(torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs]))
    return -distance.view(b, v).mean(1)


def as_tiles(completions: list) -> torch.Tensor:
    """[B, 3, 2H, 2W] float tiles in [0, 1] from tensors of that shape or PIL images."""
    import numpy as np

    return torch.stack([c if torch.is_tensor(c) else torch.from_numpy(np.asarray(c.convert("RGB"), dtype=np.float32)
                                                                        / 255.0).permute(2, 0, 1) for c in completions])


def mrc(prompts, completions, **columns) -> list[float]:
    """TRL-signature reward: completions are tiles ([3, 2H, 2W] tensors in [0, 1] or PIL images)."""
    if not completions:
        return []
    return mrc_scores(as_tiles(completions)).tolist()
