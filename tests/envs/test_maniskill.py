"""ManiSkill behind the chunk interface (GPU extra; skipped where it is absent)."""

import importlib.util

import pytest
import torch


@pytest.mark.skipif(importlib.util.find_spec("mani_skill") is None or not torch.cuda.is_available(),
                    reason="ManiSkill is an optional GPU extra (pip install 'mmpost[maniskill]') needing a GPU with "
                           "Vulkan; absent here")
def test_maniskill_chunk_env():
    from mmpost.envs.maniskill import ManiSkillChunkEnv

    env = ManiSkillChunkEnv(4, "PickCube-v1", chunk_len=4, max_chunks=2)
    obs = env.reset([0, 1, 2, 3])
    _, rewards, terminated, truncated, info = env.chunk_step(torch.zeros(4, 4, env.action_dim))
    assert rewards.shape == (4, 4) and obs["state"].shape[0] == 4 and info["success"].shape == (4,)
    env.close()
