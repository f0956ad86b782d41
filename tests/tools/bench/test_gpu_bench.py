"""``scripts/gpu_bench.py --stand-in`` (the GPU benchmark on the CPU with the tiny models) runs end to
end and prints its table: every case for both systems, positive numbers, the vLLM case skipped with
its reason, no MFU or GPU memory without a GPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")
SCRIPT = Path(__file__).parents[3] / "scripts" / "gpu_bench.py"


def test_gpu_bench_stand_in(mmpost_home, tmp_path):
    out = tmp_path / "gpu_bench.json"
    result = subprocess.run([sys.executable, str(SCRIPT), "--stand-in", "--steps", "2", "--json", str(out)],
                            capture_output=True, text=True, timeout=900, env={**os.environ, "MMPOST_HOME": mmpost_home})
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(out.read_text())
    cases = report["models"]["tiny"]["cases"]
    assert list(cases) == ["GRPO, HF generate", "GRPO, colocated vLLM", "SFT", "SFT, padding-free (TRL padded)"]
    assert "GPU" in cases["GRPO, colocated vLLM"]["skipped"]
    for label in ("GRPO, HF generate", "SFT", "SFT, padding-free (TRL padded)"):
        for system in ("mmpost", "trl"):
            numbers = cases[label][system]
            assert numbers["tokens_per_s"] > 0 and numbers["step_s"] > 0 and numbers["mfu"] is None
            assert "peak_gpu_mb" not in numbers
    table = [line for line in result.stdout.splitlines() if line.startswith("| tiny")]
    assert len(table) == 7 and all(line.count("|") == 13 for line in table)
