"""LIBERO behind the chunk interface: runs where LIBERO and its data folders are installed (it needs
mujoco < 3.4 while the suite's environment has 4.0, so the suite does not install it yet)."""

import importlib.util
import os

import pytest
import torch


@pytest.mark.skipif(importlib.util.find_spec("libero") is None or not os.environ.get("LIBERO_ROOT"),
                    reason="LIBERO is an optional extra (pip install 'mmpost[libero]', mujoco < 3.4) with its data "
                           "folders at LIBERO_ROOT; not installed here")
def test_libero_chunk_env():
    from mmpost.envs.libero import LiberoChunkEnv

    env = LiberoChunkEnv(2, "libero_spatial/0", chunk_len=2, max_chunks=1, image_size=64)
    obs = env.reset([0, 1])
    _, rewards, *_ = env.chunk_step(torch.zeros(2, 2, 7).numpy())
    assert obs["image"].shape == (2, 64, 64, 3) and rewards.shape == (2, 2)
    env.close()
