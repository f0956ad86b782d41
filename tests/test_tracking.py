"""Trackers: TensorBoard by default gets every step's metrics (the same numbers as metrics.jsonl) on
one step axis across stages; unknown or missing trackers fail before training."""

import importlib.util
import json

import pytest

import mmpost

QUICK = {"data.train_size": 8, "data.eval_size": 2, "sft.steps": 3, "sft.batch_size": 2, "rl.steps": 2,
         "rl.batch_size": 2, "rl.sampling.group_size": 2, "rl.sampling.max_new_tokens": 8, "threads": 1, "eval.sampled": False}


def test_tensorboard_gets_the_logged_metrics(mmpost_home, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    mmpost.train("arithmetic", output_dir=str(out), **QUICK)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    events = list((out / "tensorboard").rglob("events.out.tfevents.*"))
    assert events
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    sft = [(e.step, e.value) for e in accumulator.Scalars("loss/sft")]
    assert sft == [(m["step"], pytest.approx(m["loss/sft"], rel=1e-6)) for m in logged if m["stage"] == "sft"]
    rl_steps = [e.step for e in accumulator.Scalars("loss/pg")]
    assert rl_steps == [4, 5]  # after SFT's three steps
    assert "heldout/greedy/answer_match" in accumulator.Tags()["scalars"]


def test_no_trackers_and_bad_trackers(mmpost_home, tmp_path):
    out = tmp_path / "run"
    mmpost.train("arithmetic", output_dir=str(out), trackers=[], **{**QUICK, "sft.steps": 1, "rl.steps": 0})
    assert not (out / "tensorboard").exists() and (out / "metrics.jsonl").exists()
    with pytest.raises(ValueError, match="trackers: unknown"):
        mmpost.build_config("arithmetic", overrides={"trackers": "tensorbord"})
    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(ImportError, match=r"mmpost\[wandb\]"):
            mmpost.train("arithmetic", output_dir=str(tmp_path / "w"), trackers=["wandb"], **QUICK)
