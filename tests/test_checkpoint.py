"""Checkpoints: the free-space check before training."""

import pytest
import torch

from mmpost.checkpoint import InsufficientSpaceError, check_free_space


def test_insufficient_space_is_reported_before_training(tmp_path):
    huge = torch.nn.Linear(1 << 20, 1 << 20, device="meta")  # 4 TiB of fp32 weights, no memory used
    with pytest.raises(InsufficientSpaceError, match="MiB free"):
        check_free_space(tmp_path, huge, keep=2)
    assert check_free_space(tmp_path, torch.nn.Linear(4, 4), keep=2) > 0


def _write_many(path):
    from functools import partial

    from mmpost.checkpoint import write_atomic

    for _ in range(30):
        write_atomic(path, partial(torch.save, torch.arange(1000)))


def test_processes_filling_one_cache_file_at_once_never_fail(tmp_path):
    """Two study runs rendering the same object into the shared data cache: each writer has its own
    temporary file (a shared temporary name made the slower rename fail), and the file is whole."""
    import multiprocessing

    path = tmp_path / "213.pt"
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        pool.map(_write_many, [path] * 3)
    assert int(torch.load(path).sum()) == 499500 and list(tmp_path.iterdir()) == [path]
