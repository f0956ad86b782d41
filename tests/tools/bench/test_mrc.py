"""``mmpost bench-mrc --quick``: the MRC reward's and an RL step's timings are positive and add up."""


def test_bench_mrc_quick(tmp_path, mmpost_home):
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, "-m", "mmpost.cli", "bench-mrc", "--quick", "--json", str(out)], check=True,
                   capture_output=True, env={**os.environ, "TQDM_DISABLE": "1"}, timeout=600)
    results = json.loads(out.read_text())
    assert results["mrc"][0]["seconds_per_object"] > 0
    rl = results["rl"]
    assert 0 < rl["time/generate"] + rl["time/reward"] + rl["time/update"] <= rl["seconds"] * 1.01
