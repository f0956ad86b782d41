"""multiview3d: the diffusion task's SFT -> RL recipes through the engine."""

import pytest


@pytest.mark.parametrize("recipe,extra", [("flow_grpo", {}), ("ddpo", {"rl.rows.curate": [4, 2]})])
def test_multiview3d_task_runs_end_to_end(tmp_path, mmpost_home, recipe, extra):
    """SFT then RL through the engine with the MRC reward: held-out MRC, object_match and the KL to
    the SFT model are reported, the gallery is written; the ddpo case also curates its prompts."""
    import json
    import math

    import mmpost

    run = tmp_path / "run"
    results = mmpost.train(task="multiview3d", output_dir=str(run), recipe=recipe, **{
        "sft.steps": 3, "rl.steps": 2, "data.train_size": 8, "data.eval_size": 2, "rl.batch_size": 2,
        "rl.sampling.group_size": 2, "diffusion.steps": 4, **extra})
    assert results["after"]["greedy"]["mrc"] is not None and results["before"]["greedy"]["mrc"] < 0
    assert 0 <= results["after"]["greedy"]["object_match"] <= 1
    assert math.isfinite(results["kl_to_start"]["rl"]["k1"]) and results["kl_to_start"]["rl"]["k3"] >= 0
    assert len(list((run / "samples" / "after").glob("*_output.png"))) == 2
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss/pg"]) and math.isfinite(r["kl/sampled"]) for r in records if r["stage"] == "rl")
    if extra:
        assert len(json.loads((run / "curated-rl.json").read_text())["rows"]) == 2
