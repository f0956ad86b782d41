"""``mmpost bench-mrc``: seconds per MRC evaluation per object (voxel backend) and the cost split
of a multiview3d RL iteration (sample / reward / update) from a short real run of the trainer;
``--nerfstudio``: how the nerfacto backend agrees with the voxel one (:func:`backend_agreement`)."""

from __future__ import annotations

import time

import torch


def mrc_seconds(objects: int, grid: int, steps: int) -> float:
    """Seconds per object of one batched MRC evaluation on procedural objects."""
    from mmpost.data.objects3d import fixed_cameras, object_spec, render, tile
    from mmpost.rewards.mrc import VoxelReconstructor, mrc_scores

    cameras = fixed_cameras(32)
    tiles = torch.stack([tile(render(object_spec(s), cameras)) for s in range(objects)])
    start = time.perf_counter()
    mrc_scores(tiles, VoxelReconstructor(grid=grid, steps=steps))
    return (time.perf_counter() - start) / objects


def perturbations(views: torch.Tensor) -> dict[str, torch.Tensor]:
    """``views`` [B, 4, 3, H, W] of B objects, consistent, and four ways of making view 1 disagree
    (the classes Carve3D's MRC must detect): shifted, flipped, recoloured, and views 1-3 taken from
    the other objects."""
    b = len(views)
    out = {"consistent": views.clone()}
    for name, change in (("shifted 3 px", lambda v: torch.roll(v, 3, dims=-1)), ("flipped", lambda v: v.flip(-1)),
                         ("recoloured", lambda v: v[:, [2, 0, 1]])):
        x = views.clone()
        x[:, 1] = change(x[:, 1])
        out[name] = x
    x = views.clone()
    x[:, 1:] = torch.stack([views[(torch.arange(b) + k) % b, k] for k in (1, 2, 3)], 1)
    out["views of different objects"] = x
    return out


def backend_agreement(objects: int = 4, iterations: int = 600, size: int = 32) -> dict:
    """MRC of ``objects`` procedural objects x (consistent + 4 perturbations) tiles by the voxel and
    the nerfstudio (nerfacto, ``iterations``) backends: Spearman's rank correlation of the two
    over all tiles, and for each backend the share of perturbed tiles scored below their object's
    consistent tile."""
    from scipy.stats import spearmanr

    from mmpost.data.objects3d import fixed_cameras, object_spec, render, tile
    from mmpost.rewards.mrc import VoxelReconstructor, mrc_scores
    from mmpost.rewards.mrc_nerfstudio import NerfstudioReconstructor

    cameras = fixed_cameras(size)
    sets = perturbations(torch.stack([render(object_spec(s), cameras) for s in range(objects)]))
    scores, seconds = {}, {}
    for backend, reconstructor in (("voxel", VoxelReconstructor()), ("nerfacto", NerfstudioReconstructor(iterations=iterations))):
        start = time.perf_counter()
        scores[backend] = {name: mrc_scores(tile(views), reconstructor, cameras) for name, views in sets.items()}
        seconds[backend] = (time.perf_counter() - start) / (objects * len(sets))
        print(f"{backend}: {seconds[backend]:.1f} s a tile", flush=True)
    flat = {b: torch.cat([scores[b][name] for name in sets]) for b in scores}
    rho = float(spearmanr(flat["voxel"].numpy(), flat["nerfacto"].numpy()).statistic)
    detected = {b: float(torch.cat([scores[b][name] < scores[b]["consistent"] for name in sets if name != "consistent"])
                         .float().mean()) for b in scores}
    print(f"\nMRC on {objects} objects x {len(sets)} conditions = {objects * len(sets)} tiles ({size} px views; "
          f"nerfacto {iterations} iterations)")
    print(f"{'condition':<28}{'voxel':>10}{'nerfacto':>10}   (mean over objects)")
    for name in sets:
        print(f"{name:<28}{scores['voxel'][name].mean():>10.4f}{scores['nerfacto'][name].mean():>10.4f}")
    print(f"Spearman rank correlation, voxel vs nerfacto, over {objects * len(sets)} tiles: {rho:.3f}")
    print(f"perturbed tiles below their consistent tile: voxel {detected['voxel']:.0%}, nerfacto {detected['nerfacto']:.0%}")
    return {"spearman": rho, "detected": detected, "seconds_per_tile": seconds, "iterations": iterations,
            "scores": {b: {name: v.tolist() for name, v in scores[b].items()} for b in scores}}


def rl_iterations(iterations: int, overrides: dict) -> dict:
    """Median seconds per multiview3d RL iteration and its split."""
    from mmpost.tools.bench.env import median_iteration_metrics

    return median_iteration_metrics("multiview3d", {
        "sft.steps": 0, "rl.steps": iterations, "data.train_size": 16, "data.eval_size": 1,
        "eval.samples_to_save": 0, **overrides}, ("seconds", "time/generate", "time/reward", "time/update"))


def run(objects: int = 8, iterations: int = 4, quick: bool = False) -> dict:
    results = {"mrc": [], "rl": {}}
    print(f"MRC (voxel backend), {objects} objects of 4 views 32x32, batched")
    print(f"{'grid':>6}{'steps':>7}{'s/object':>10}")
    for grid, steps in ((16, 40),) if quick else ((16, 40), (24, 60)):
        seconds = mrc_seconds(2 if quick else objects, grid, steps)
        results["mrc"].append({"grid": grid, "steps": steps, "seconds_per_object": seconds})
        print(f"{grid:>6}{steps:>7}{seconds:>10.2f}")
    r = rl_iterations(2 if quick else iterations, {"rl.batch_size": 2, "rl.sampling.group_size": 2} if quick else {})
    results["rl"] = r
    from mmpost import build_config

    cfg = build_config("multiview3d")
    rl = cfg.stage("rl")
    print(f"\nRL iteration (multiview3d default: {rl.batch_size} prompts x {rl.sampling.group_size} samples, "
          f"{cfg.diffusion.steps} {cfg.diffusion.sampler} steps): median seconds")
    print(f"{'total':>8}{'sample':>8}{'reward':>8}{'update':>8}")
    print(f"{r['seconds']:>8.2f}{r['time/generate']:>8.2f}{r['time/reward']:>8.2f}{r['time/update']:>8.2f}")
    return results
