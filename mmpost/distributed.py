"""Data-parallel runs (``accelerate launch --num_processes N``) that match one process step for step.

With the same global batch, N processes give the same losses and parameters as one process (up
to float rounding), because:

- each process takes a contiguous slice of the step's rows (:func:`shard`);
- sampling is a pure function of the position: each ``generate`` call of a step draws from a
  generator seeded by (run seed, stage, step, global chunk index) (:func:`seeded`), so the chunk a
  process samples is the chunk one process would have sampled (set ``generation_batch`` to the
  per-process batch in both runs);
- a supervised step's random draws (flow-matching noise and times, denoising noise) are made for
  the whole batch on every process, each keeping its own rows (:func:`whole_batch_draw`), so a
  row meets the noise one process would have given it;
- token-mean losses divide by the mean token count over processes, not the local one (as
  transformers' ``average_tokens_across_devices``), so DDP's gradient average is the global
  token mean (:func:`token_count`);
- PPO's advantage whitening uses the whole batch's mean and std (:func:`process_sum`);
- logged metrics are the mean over processes (:func:`mean_over_processes`).

One difference stays: with ``pg.minibatches`` > 1 each process splits its own share of the batch, so
a minibatch holds other rows than one process's would (the step is the same with one minibatch).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.distributed as dist

_global_tokens = False  # inside a step's loss: token counts are global (set by `global_token_mean`)


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a distributed run."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(indices: list[int]) -> list[int]:
    """This process's contiguous slice of a step's rows."""
    rank, size = world()
    if size == 1:
        return indices
    if len(indices) % size:
        raise ValueError(f"batch_size {len(indices)} is not divisible by the {size} processes")
    per = len(indices) // size
    return indices[rank * per:(rank + 1) * per]


def whole_batch_draw(draw, rows: int, *shape: int) -> torch.Tensor:
    """This process's ``rows`` of ``draw((rows * processes, *shape))``: a data-parallel step's random
    draws made for the whole batch and sliced as :func:`shard` slices the rows, so they do not depend on
    how many processes share the step (one process: ``draw((rows, *shape))`` itself)."""
    rank, size = world()
    whole = draw((rows * size, *shape))
    return whole if size == 1 else whole[rank * rows:(rank + 1) * rows]


@contextlib.contextmanager
def seeded(*position: int):
    """Run the body (one ``generate`` call) with torch's RNG seeded from ``position``, leaving the
    global RNG stream as it was."""
    seed = int(np.random.SeedSequence(list(position)).generate_state(1, dtype=np.uint64)[0] >> 1)
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def global_token_mean():
    """Within the body, :func:`token_count` is the mean count over processes. Every process must
    run the same sequence of token-mean reductions inside (they are collective)."""
    global _global_tokens
    previous, _global_tokens = _global_tokens, True
    try:
        yield
    finally:
        _global_tokens = previous


def token_count(mask: torch.Tensor) -> torch.Tensor:
    """The normaliser of a token-mean loss over ``mask``: its real steps, averaged over processes
    inside :func:`global_token_mean` (so the DDP average of the processes' losses is the global
    token mean)."""
    count = mask.sum()
    _, size = world()
    if not _global_tokens or size == 1:
        return count
    return process_sum(count) / size


def process_sum(value: torch.Tensor) -> torch.Tensor:
    """``value`` summed over the processes of a data-parallel run (``value`` itself in one process);
    every process must call it."""
    if world()[1] == 1:
        return value
    total = value.detach().clone()
    dist.all_reduce(total)
    return total


COUNTS = ("tokens", "samples", "env/steps")  # summed over processes; every other metric is averaged


def mean_over_processes(metrics: dict[str, float]) -> dict[str, float]:
    """Each metric's mean over the processes that logged it (counts: their sum); all processes must
    call this."""
    _, size = world()
    if size == 1:
        return metrics
    gathered: list[dict] = [None] * size
    dist.all_gather_object(gathered, metrics)
    keys = dict.fromkeys(k for m in gathered for k in m)
    out = {}
    for key in keys:
        values = [m[key] for m in gathered if key in m]
        numeric = [v for v in values if isinstance(v, (int, float))]
        if len(numeric) != len(values):
            out[key] = values[0]
        else:
            out[key] = sum(numeric) if key in COUNTS else sum(numeric) / len(numeric)
    return out
