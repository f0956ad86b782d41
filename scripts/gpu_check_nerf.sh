#!/usr/bin/env bash
# The nerfstudio MRC backend on a GPU machine with the extra installed (pip install -e '.[nerf]'
# with torch pinned, see pyproject.toml). Fits nerfacto to consistent views of procedural objects
# and to views of different objects, offline, and checks that MRC ranks them the right way round.
# Prints PASS, FAIL or SKIP (with the reason); the exit status is non-zero on a FAIL.
set -u
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || echo "no nvidia-smi"
if ! python -c "import nerfstudio" 2>/dev/null; then echo "SKIP nerfstudio MRC: python cannot import nerfstudio"; exit 0; fi
timeout 1200 env HF_HUB_OFFLINE=1 python - <<'PY'
import sys, time
import torch
from mmpost.data.objects3d import fixed_cameras, object_spec, render, tile, untile
from mmpost.rewards.mrc import mrc_scores, VoxelReconstructor
from mmpost.rewards.mrc_nerfstudio import NerfstudioReconstructor

cameras = fixed_cameras(32)
tiles = torch.stack([tile(render(object_spec(seed), cameras)) for seed in range(3)])
views = untile(tiles)
mixed = views.clone()
mixed[:, 1] = views.roll(1, 0)[:, 1]  # one view of another object
for name, reconstructor in (("voxel", VoxelReconstructor()), ("nerfacto", NerfstudioReconstructor(iterations=1000))):
    start = time.perf_counter()
    consistent = mrc_scores(tiles, reconstructor)
    inconsistent = mrc_scores(tile(mixed), reconstructor)
    seconds = (time.perf_counter() - start) / 6
    print(f"{name}: consistent {consistent.tolist()} inconsistent {inconsistent.tolist()} ({seconds:.1f} s/object)")
    if not (consistent > inconsistent).all():
        print(f"FAIL nerfstudio MRC: {name} does not rank consistent views above inconsistent ones"); sys.exit(1)
print("PASS nerfstudio MRC")
PY
