"""``mmpost bench --quick`` completes and reports positive, self-consistent numbers for mmpost and TRL
(no timing thresholds: speed is judged by the full benchmark's ratios, not by tests); the floor (the
model's own work alone) is below mmpost's step."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("trl")


def test_bench_quick(mmpost_home, tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "-m", "mmpost.cli", "bench", "--quick", "--cases", "grpo_vlm,sft_vlm",
                             "--json", str(out)], capture_output=True, text=True, timeout=1200,
                            env={**os.environ, "MMPOST_HOME": mmpost_home})
    assert result.returncode == 0, result.stderr[-4000:]
    assert "mmpost/TRL" in result.stdout
    report = json.loads(out.read_text())
    for case, systems in report["cases"].items():
        floor = systems.pop("floor")  # the model's own work alone, in a third process
        parts = ("generate_s", "forward_s", "backward_s", "optimizer_s")
        assert all(floor[k] > 0 for k in parts[case.startswith("sft"):]), floor
        assert floor["step_s"] <= sum(floor[k] for k in parts) * 1.5, floor  # median of sums vs sum of medians
        assert floor["step_s"] < systems["mmpost"]["step_s"], (case, floor)  # the trainer's work comes on top
        for system, numbers in systems.items():
            assert all(v > 0 for k, v in numbers.items() if k != "reward_s"), (case, system, numbers)
            if case.startswith("grpo"):
                assert numbers["completions_per_s"] == pytest.approx(8 / numbers["step_s"])
                parts = numbers["generate_s"] + numbers["reward_s"] + numbers["update_s"]
                assert parts <= numbers["step_s"] * 1.5, (case, system, numbers)  # medians of parts vs total
            else:
                assert numbers["samples_per_s"] == pytest.approx(8 / numbers["step_s"])
    scaling = report["scaling"]
    assert set(scaling) == {"base", "group x2", "length x2", "image side x2"} and all(v > 0 for v in scaling.values())


def test_bench_device_cuda_without_a_gpu_says_so():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = subprocess.run([sys.executable, "-m", "mmpost.cli", "bench", "--device", "cuda", "--quick"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "sees no GPU" in result.stderr
