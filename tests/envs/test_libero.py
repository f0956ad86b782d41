"""LIBERO behind the chunk interface (GPU extra with local assets; skipped where it is absent)."""

import importlib.util
import os

import pytest
import torch


@pytest.mark.skipif(importlib.util.find_spec("libero") is None or not os.environ.get("LIBERO_ROOT"),
                    reason="LIBERO is an optional GPU extra (pip install 'mmpost[libero]') with assets from a local "
                           "copy (LIBERO_ROOT); absent here")
def test_libero_chunk_env():
    from mmpost.envs.libero import LiberoChunkEnv

    env = LiberoChunkEnv(2, "libero_spatial/0", chunk_len=2, max_chunks=1, image_size=64)
    obs = env.reset([0, 1])
    _, rewards, *_ = env.chunk_step(torch.zeros(2, 2, 7).numpy())
    assert obs["image"].shape == (2, 64, 64, 3) and rewards.shape == (2, 2)
    env.close()
