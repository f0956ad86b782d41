"""``mmpost bench-env --quick``: every observation x worker case steps, and the RL split fits its total."""

import json

from tests.tasks.test_reach import mmpost


def test_bench_env_quick(tmp_path, mmpost_home):
    out = tmp_path / "bench.json"
    mmpost("bench-env", "--quick", "--envs", "8", "--json", str(out))
    results = json.loads(out.read_text())
    assert {(r["obs"], r["workers"]) for r in results["env"]} == {("state", 1), ("state", 2), ("image", 1), ("image", 2)}
    assert all(r["steps_per_s"] > 0 for r in results["env"])
    for case in results["rl"]:
        parts = case["time/simulate"] + case["time/infer"] + case["time/update"]
        assert case["seconds"] > 0 and 0 < parts <= case["seconds"] * 1.01  # the split fits inside the total
