"""eval.every: a learning curve in metrics.jsonl that leaves the training itself unchanged."""

import json

import mmpost
import pytest
import torch
from safetensors.torch import load_file

from mmpost.engine import train

SETTINGS = {"sft.steps": 3, "sft.batch_size": 4, "rl.steps": 2, "rl.batch_size": 2, "rl.sampling.group_size": 2,
            "rl.sampling.max_new_tokens": 16, "data.train_size": 16, "data.eval_size": 4, "eval.sampled": False,
            "threads": 1}


def _run(tmp_path, name, **extra):
    out = tmp_path / name
    train(mmpost.build_config("arithmetic", output_dir=str(out), overrides={**SETTINGS, **extra}))
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()], out


def test_learning_curve_points_at_every_multiple_and_training_unchanged(mmpost_home, tmp_path):
    plain, plain_dir = _run(tmp_path, "plain")
    curved, curved_dir = _run(tmp_path, "curved", **{"eval.every": 2, "eval.curve": ["heldout", "ood"]})
    points = [line for line in curved if "updates" in line]
    assert [p["updates"] for p in points] == [2.0, 4.0]  # 5 updates (3 SFT + 2 RL): the multiples of 2
    assert [(p["stage"], p["step"]) for p in points] == [("sft", 2), ("rl", 1)]
    for point in points:
        assert 0.0 <= point["eval/heldout/answer_match"] <= 1.0 and 0.0 <= point["eval/ood/answer_match"] <= 1.0
    assert not any("updates" in line for line in plain)
    # the evaluations put the random state back: the same losses, rewards and final weights as without them
    for a, b in zip(plain, curved):
        for key in ("loss", "loss/pg", "reward/total/mean"):
            if key in a:
                assert a[key] == pytest.approx(b[key], abs=1e-7), key
    before, after = load_file(plain_dir / "final" / "model.safetensors"), load_file(curved_dir / "final" / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_learning_curve_settings_are_checked():
    with pytest.raises(ValueError, match="eval.curve must be one of heldout, validation, ood"):
        mmpost.build_config("arithmetic", overrides={"eval.curve": ["test"]})
    with pytest.raises(ValueError, match="eval.every must be >= 0"):
        mmpost.build_config("arithmetic", overrides={"eval.every": -1})
