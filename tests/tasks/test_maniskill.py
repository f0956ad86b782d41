"""``mmpost train --task maniskill`` end to end on CPU physics (short): few-shot SFT on the scripted
expert's demonstrations, then PPO with Flow-SDE in ManiSkill; demonstrations cached and reused."""

import json

import numpy as np

from tests.tasks.test_reach import mmpost

QUICK = ["--set", "sft.steps=20", "--set", "rl.steps=2", "--set", "data.demos=4", "--set", "data.eval_size=4",
         "--set", "env.num_envs=4", "--set", "rl.batch_size=4", "--set", "eval.batch_size=4",
         "--set", "env.max_chunks=6", "--set", "flow.hidden=64", "--set", "threads=1"]


def test_maniskill_cli_run(tmp_path, mmpost_home):
    run = tmp_path / "run"
    mmpost("train", "--task", "maniskill", "--output-dir", str(run), *QUICK)
    results = json.loads((run / "results.json").read_text())
    assert {"before", "after_sft", "after"} <= set(results)
    for key in ("before", "after"):
        assert 0.0 <= results[key]["greedy"]["success"] <= 1.0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rl = [r for r in records if r["stage"] == "rl"]
    assert len(rl) == 2 and all(r["time/simulate"] > 0 and "env/success" in r and "loss/value" in r for r in rl)
    sft = [r for r in records if r["stage"] == "sft"]
    assert len(sft) == 20 and all(np.isfinite(r["loss/sft"]) for r in sft)


def test_demonstrations_are_cached_and_identical_when_reused(mmpost_home):
    import mmpost as api
    from mmpost.tasks.maniskill import ManiSkill

    cfg = api.build_config("maniskill", overrides={"data.demos": 2, "env.max_chunks": 6})
    first = ManiSkill(cfg).rows("demos")
    cached = list((api.models.tiny_qwen2vl.mmpost_home() / "data").glob("maniskill-demos-*.npz"))
    assert cached, "the demonstrations were not cached"
    again = ManiSkill(cfg).rows("demos")
    assert len(first) == len(again) > 0
    for a, b in zip(first, again):
        assert np.array_equal(a["state"], b["state"]) and np.array_equal(a["actions"], b["actions"])
        assert a["instruction"] == b["instruction"] == "pick up the cube and move it to the goal"
        assert a["actions"].shape == (cfg.flow.action_horizon, 4)


def test_a_maniskill_task_without_an_expert_trains_without_sft_and_says_why_sft_cannot(tmp_path, mmpost_home):
    """PushCube has no scripted expert: with sft.steps=0 no demonstration is asked for (a stage without
    steps reads no data) and RL runs; with SFT steps the error names what to give instead."""
    tiny = ["--env", "maniskill:PushCube-v1", "--set", "rl.steps=1", "--set", "data.eval_size=2", "--set",
            "env.num_envs=2", "--set", "rl.batch_size=2", "--set", "rl.pg.minibatches=1", "--set", "eval.batch_size=2", "--set", "env.max_chunks=2",
            "--set", "flow.hidden=32", "--set", "eval.sampled=false", "--set", "threads=1"]
    mmpost("train", "--task", "maniskill", "--output-dir", str(tmp_path / "rl"), "--set", "sft.steps=0", *tiny)
    results = json.loads((tmp_path / "rl" / "results.json").read_text())
    assert 0.0 <= results["after"]["greedy"]["success"] <= 1.0
    refused = mmpost("train", "--task", "maniskill", "--output-dir", str(tmp_path / "sft"), "--set", "sft.steps=2",
                     *tiny, check=False)
    assert refused.returncode != 0 and "has no scripted expert" in refused.stderr and "data.path" in refused.stderr
