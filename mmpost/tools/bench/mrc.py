"""``mmpost bench-mrc``: seconds per MRC evaluation per object (voxel backend) and the cost split
of a multiview3d RL iteration (sample / reward / update) from a short real run of the trainer."""

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
