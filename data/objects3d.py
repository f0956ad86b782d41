"""Procedural 3D objects (unions of coloured spheres, boxes and cylinders) with a text
description, rendered from the four fixed cameras of multi-view diffusion (Instant3D / Carve3D:
elevation 20 deg, azimuths 0/90/180/270, white background) by a small pure-torch volume renderer.

Train, validation, held-out and out-of-distribution objects come from disjoint seed ranges. Train,
validation and held-out objects are drawn alike (in distribution); an out-of-distribution object's first
part pairs a shape with a colour never paired in training (see :data:`UNSEEN_PAIRS`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from mmpost.data.splits import OOD_SEED_OFFSET

COLORS = {"red": (0.85, 0.15, 0.15), "green": (0.15, 0.7, 0.2), "blue": (0.15, 0.3, 0.85),
          "yellow": (0.9, 0.8, 0.1), "purple": (0.6, 0.2, 0.7), "orange": (0.95, 0.5, 0.1)}
SHAPES = ("sphere", "box", "cylinder")
UNSEEN_PAIRS = {("sphere", "purple"), ("box", "orange"), ("cylinder", "yellow")}  # only in out-of-distribution objects
ELEVATION, AZIMUTHS, DISTANCE, FOV = 20.0, (0.0, 90.0, 180.0, 270.0), 3.2, 40.0
LIGHT = torch.tensor([0.4, 0.8, 0.45]) / math.sqrt(0.4**2 + 0.8**2 + 0.45**2)


@dataclass
class Cameras:
    """Pinhole cameras, OpenGL convention (camera looks along its -z): ``c2w`` [V, 4, 4] and
    intrinsics in pixels for square ``size`` x ``size`` images."""

    c2w: torch.Tensor
    focal: float
    size: int

    def rays(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Origins and unit directions, [V, size*size, 3] each, row-major pixels (row 0 = top)."""
        half = (self.size - 1) / 2
        v, u = torch.meshgrid(torch.arange(self.size, dtype=torch.float32),
                              torch.arange(self.size, dtype=torch.float32), indexing="ij")
        local = torch.stack([(u - half) / self.focal, -(v - half) / self.focal, -torch.ones_like(u)], -1).reshape(-1, 3)
        directions = local @ self.c2w[:, :3, :3].transpose(1, 2)
        directions = directions / directions.norm(dim=-1, keepdim=True)
        return self.c2w[:, None, :3, 3].expand_as(directions), directions


def fixed_cameras(size: int = 32) -> Cameras:
    """The four views of the tile, looking at the origin from ``DISTANCE``."""
    poses = []
    for azimuth in AZIMUTHS:
        el, az = math.radians(ELEVATION), math.radians(azimuth)
        position = torch.tensor([DISTANCE * math.cos(el) * math.sin(az), DISTANCE * math.sin(el),
                                 DISTANCE * math.cos(el) * math.cos(az)])
        back = position / position.norm()  # camera +z points away from the target
        right = torch.linalg.cross(torch.tensor([0.0, 1.0, 0.0]), back)
        right = right / right.norm()
        up = torch.linalg.cross(back, right)
        pose = torch.eye(4)
        pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, up, back, position
        poses.append(pose)
    return Cameras(torch.stack(poses), focal=(size / 2) / math.tan(math.radians(FOV / 2)), size=size)


def object_spec(seed: int) -> dict:
    """1-3 primitives resting around the origin, each with a colour, and a description."""
    rng = np.random.default_rng(seed)
    ood = seed >= OOD_SEED_OFFSET
    parts = []
    for i in range(int(rng.integers(1, 4))):
        while True:
            shape, color = SHAPES[int(rng.integers(3))], list(COLORS)[int(rng.integers(len(COLORS)))]
            if ((shape, color) in UNSEEN_PAIRS) == (ood and i == 0):
                break
        size = float(rng.uniform(0.3, 0.55))
        center = [float(rng.uniform(-0.45, 0.45)), float(rng.uniform(-0.3, 0.3)), float(rng.uniform(-0.45, 0.45))]
        parts.append({"shape": shape, "color": color, "size": size, "center": center})
    names = [f"{'an' if p['color'][0] in 'aeiou' else 'a'} {p['color']} {p['shape']}" for p in parts]
    description = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return {"seed": seed, "parts": parts, "description": description}


def _sdf(points: torch.Tensor, part: dict) -> torch.Tensor:
    p = points - torch.tensor(part["center"])
    s = part["size"]
    if part["shape"] == "sphere":
        return p.norm(dim=-1) - s
    if part["shape"] == "box":
        q = p.abs() - s * 0.8
        return q.clamp(min=0).norm(dim=-1) + q.max(dim=-1).values.clamp(max=0)
    radial = torch.stack([p[..., [0, 2]].norm(dim=-1) - s * 0.7, p[..., 1].abs() - s], -1)  # upright cylinder
    return radial.clamp(min=0).norm(dim=-1) + radial.max(dim=-1).values.clamp(max=0)


def render(spec: dict, cameras: Cameras, samples: int = 64) -> torch.Tensor:
    """[V, 3, size, size] images in [0, 1]: volume rendering of the union's SDF (sharp density),
    Lambert-shaded base colours, white background."""
    origins, directions = cameras.rays()
    t = torch.linspace(DISTANCE - 1.8, DISTANCE + 1.8, samples)
    points = origins[..., None, :] + directions[..., None, :] * t[:, None]  # [V, R, S, 3]
    distances = torch.stack([_sdf(points, part) for part in spec["parts"]])  # [P, V, R, S]
    nearest, which = distances.min(0)
    density = 400.0 * torch.sigmoid(-nearest / 0.01)
    base = torch.tensor([COLORS[p["color"]] for p in spec["parts"]])[which]  # [V, R, S, 3]
    eps = 1e-3  # surface normal of the nearest part by central differences
    normal = torch.stack([
        torch.stack([_sdf(points + eps * e, part) - _sdf(points - eps * e, part) for part in spec["parts"]])
        .gather(0, which[None]).squeeze(0) for e in torch.eye(3)], -1)
    normal = normal / normal.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    colour = base * (0.45 + 0.55 * (normal @ LIGHT).clamp(min=0))[..., None]
    return composite(density, colour, t[1] - t[0]).reshape(len(cameras.c2w), cameras.size, cameras.size, 3) \
        .permute(0, 3, 1, 2).clamp(0, 1)


def composite(density: torch.Tensor, colour: torch.Tensor, step) -> torch.Tensor:
    """Emission-absorption compositing along the last sample axis, over a white background."""
    alpha = 1 - torch.exp(-density * step)
    transmittance = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), 1 - alpha[..., :-1] + 1e-10], -1), -1)
    weights = alpha * transmittance
    return (weights[..., None] * colour).sum(-2) + (1 - weights.sum(-1, keepdim=True))


def tile(views: torch.Tensor) -> torch.Tensor:
    """[..., 4, 3, H, W] views -> [..., 3, 2H, 2W] 2x2 tile (azimuth 0, 90 / 180, 270)."""
    top = torch.cat([views[..., 0, :, :, :], views[..., 1, :, :, :]], -1)
    bottom = torch.cat([views[..., 2, :, :, :], views[..., 3, :, :, :]], -1)
    return torch.cat([top, bottom], -2)


def untile(tiles: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`tile`."""
    h, w = tiles.shape[-2] // 2, tiles.shape[-1] // 2
    return torch.stack([tiles[..., :h, :w], tiles[..., :h, w:], tiles[..., h:, :w], tiles[..., h:, w:]], -4)
