"""Checkpoints: the free-space check before training."""

import pytest
import torch

from mmpost.checkpoint import InsufficientSpaceError, check_free_space


def test_insufficient_space_is_reported_before_training(tmp_path):
    huge = torch.nn.Linear(1 << 20, 1 << 20, device="meta")  # 4 TiB of fp32 weights, no memory used
    with pytest.raises(InsufficientSpaceError, match="MiB free"):
        check_free_space(tmp_path, huge, keep=2)
    assert check_free_space(tmp_path, torch.nn.Linear(4, 4), keep=2) > 0
