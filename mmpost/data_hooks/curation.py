"""Prompt curation (Carve3D): train RL on the prompts the starting model does worst on.

Carve3D scores ~100 candidate prompts by a few base-model samples each and keeps the 30 with the
lowest MRC: prompts that are already consistent teach little. The chosen rows are written to the
run directory when the stage starts, so a resumed run trains on the same rows even though the
model has moved since.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mmpost.checkpoint import write_json_atomic
from mmpost.policy import eval_mode
from mmpost.rewarding import score_rollout


@torch.no_grad()
def lowest_reward_rows(policy, rows: list[dict], rewards: dict, weights: dict, candidates: int, keep: int,
                       samples: int, batch_size: int, record: Path) -> list[dict]:
    """The ``keep`` rows among the first ``candidates`` with the lowest mean total reward over
    ``samples`` samples each; the choice is saved in ``record`` (JSON) and reused when it exists."""
    if record.exists():
        chosen = json.loads(record.read_text())["rows"]
    else:
        from tqdm.auto import tqdm

        pool = rows[:candidates]
        with eval_mode(policy.model):
            means = []
            for start in tqdm(range(0, len(pool), batch_size), desc="curating prompts", unit="batch"):
                chunk = pool[start:start + batch_size]
                rollout = policy.rollout(chunk, samples)
                score_rollout(rollout, rewards, weights)
                means += torch.nan_to_num(rollout.rewards, nan=float("inf")).view(len(chunk), samples).mean(1).tolist()
        chosen = sorted(range(len(pool)), key=lambda i: means[i])[:keep]
        write_json_atomic(record, {"rows": chosen, "mean_reward": [means[i] for i in chosen],
                                   "candidates_mean_reward": sum(means) / len(means)})
    return [rows[i] for i in chosen]
