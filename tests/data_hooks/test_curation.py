"""Prompt curation (Carve3D): the rows with the lowest mean reward under the current model are
kept, and the choice is saved so a resumed run trains on the same rows."""

import torch

from mmpost.adapters.diffusion_policy import DiffusionPolicy, TileDiffusionModel
from mmpost.data_hooks.curation import lowest_reward_rows


def test_keeps_the_lowest_mean_reward_rows_and_reuses_the_record(tmp_path):
    torch.manual_seed(0)
    policy = DiffusionPolicy(TileDiffusionModel({"tile_size": 16, "channels": [8, 16, 16], "text_dim": 16}), steps=2)
    rows = [{"description": f"object {i}", "seed": i, "target": float(i % 5)} for i in range(10)]
    # a reward that depends on the row (its column), so the expected choice is known
    reward = {"by_row": lambda prompts, completions, target, **_: [-t for t in target]}
    record = tmp_path / "curated-rl.json"
    chosen = lowest_reward_rows(policy, rows, reward, {"by_row": 1.0}, candidates=8, keep=3, samples=2,
                                batch_size=3, record=record)
    # the first 8 rows have targets 0 1 2 3 4 0 1 2: the lowest rewards are rows 4, 3 and 2 (2 before its tie 7)
    assert sorted(r["seed"] for r in chosen) == [2, 3, 4]
    again = lowest_reward_rows(policy, rows, {"by_row": lambda prompts, completions, **_: [0.0] * len(prompts)},
                               {"by_row": 1.0}, candidates=8, keep=3, samples=2, batch_size=3, record=record)
    assert [r["seed"] for r in again] == [r["seed"] for r in chosen]
