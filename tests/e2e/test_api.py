"""The Python API: a reward registered with @mmpost.reward drives mmpost.train, which returns metrics."""

import json

import mmpost


def test_train_with_registered_reward(mmpost_home, tmp_path):
    calls = []

    @mmpost.reward("api_test_has_title")
    def has_title(prompts, completions, code, **columns):
        calls.append(len(completions))
        assert len(code) == len(completions)  # dataset columns arrive per completion, TRL style
        return [1.0 if "title" in c else 0.0 if c else None for c in completions]

    results = mmpost.train(task="chart2code", rewards=["chart_render", "api_test_has_title"], weights=[1.0, 0.5],
                           output_dir=str(tmp_path / "run"), max_steps=2,
                           **{"data.train_size": 32, "data.eval_size": 4, "rl.batch_size": 2, "rl.sampling.group_size": 2,
                              "rl.sampling.max_new_tokens": 16, "threads": 1, "sandbox_workers": 1, "eval.sampled": False})
    assert calls and calls[0] == 4  # 2 prompts x group of 2
    assert set(results) >= {"before", "after_sft", "after"}
    assert "api_test_has_title" in results["after"]["greedy"] and "chart_render" in results["after"]["greedy"]
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "reward/api_test_has_title/mean" in last and "reward/chart_render/mean" in last
