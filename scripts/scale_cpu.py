"""Throughput and peak memory per process on CPU: one process, two data-parallel processes, two
sharded processes (``sharding=fsdp``), on a Qwen2-VL-shaped model big enough for the optimiser state
to dominate (default ~120M parameters, random init, built here: no download).

    python scripts/scale_cpu.py [--hidden 1024 --layers 8] [--steps 6] [--out /tmp/scale]

Each run is arithmetic SFT from the same model, the same global batch; printed: samples/s (median over
steps after the first), peak RSS of each process (``ru_maxrss``), and the parameter count. Runs one
after the other; on a 2-core machine two processes share the cores, so samples/s is per machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# runs mmpost's CLI and, at exit, writes this process's peak resident memory to PEAK_DIR/rank-N.txt
WRAPPER = """
import atexit, os, resource, runpy, sys
def _peak():
    path = os.path.join(os.environ["PEAK_DIR"], "rank-%s.txt" % os.environ.get("RANK", "0"))
    open(path, "w").write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
atexit.register(_peak)
sys.argv = ["mmpost"] + sys.argv[1:]
runpy.run_module("mmpost.cli", run_name="__main__")
"""


def build_model(out: Path, hidden: int, layers: int) -> tuple[Path, int]:
    """A Qwen2-VL of ``hidden`` x ``layers`` with the arithmetic task's tokenizer, saved to ``out``."""
    import torch
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    from mmpost.config import TrainConfig
    from mmpost.models import tiny_qwen2vl
    from mmpost.tasks.arithmetic import Arithmetic

    processor = AutoProcessor.from_pretrained(Arithmetic(TrainConfig(task="arithmetic")).model_path())
    tiny_qwen2vl.PRESETS["scale"] = dict(hidden=hidden, layers=layers, heads=8, kv_heads=4, vision_width=64,
                                         vision_layers=1)
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(tiny_qwen2vl.build_config(processor.tokenizer, "scale"))
    model.generation_config.eos_token_id = model.config.text_config.eos_token_id
    model.generation_config.pad_token_id = model.config.text_config.pad_token_id
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out, sum(p.numel() for p in model.parameters())


def run(name: str, launcher: list[str], model: Path, root: Path, steps: int, extra: list[str]) -> dict:
    out, peaks = root / name, root / f"{name}-peak"
    peaks.mkdir(parents=True, exist_ok=True)
    wrapper = root / "wrapper.py"
    wrapper.write_text(WRAPPER)
    cmd = [*launcher, str(wrapper), "train", "--task", "arithmetic", "--model", str(model), "--recipe", "sft",
           "--set", f"sft.steps={steps}", "--set", "sft.batch_size=8", "--set", "data.train_size=64", "--set",
           "data.eval_size=2", "--set", "eval.sampled=false", "--set", "trackers=[]", "--set", "threads=1",
           "--set", f"checkpoint_every={steps * 10}", "--output-dir", str(out), *extra]
    env = {**os.environ, "PEAK_DIR": str(peaks), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode:
        sys.exit(f"{name} failed:\n{result.stderr[-3000:]}")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [m["samples_per_s"] for m in metrics[1:] if "samples_per_s" in m] or \
        [m.get("tokens_per_s", 0.0) for m in metrics[1:]]
    rss = sorted(int(p.read_text()) / 1024 for p in peaks.glob("rank-*.txt"))  # ru_maxrss: KiB on Linux
    return {"run": name, "processes": len(rss), "rate": statistics.median(rates), "peak_mb": rss,
            "unit": "samples/s" if "samples_per_s" in metrics[-1] else "tokens/s"}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="mmpost-scale-"))
    model, params = build_model(root / "model", args.hidden, args.layers)
    two = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", "0"]
    rows = [run("1 process", [sys.executable], model, root, args.steps, []),
            run("2 processes, data parallel", two, model, root, args.steps, []),
            run("2 processes, sharding=fsdp", two, model, root, args.steps, ["--set", "sharding=fsdp"])]
    print(f"\nmodel: Qwen2-VL-shaped, {params / 1e6:.0f}M parameters (fp32), SFT, global batch 8, {args.steps} steps")
    print("| run | throughput | peak RSS per process (MiB) |")
    print("|---|---|---|")
    for row in rows:
        print(f"| {row['run']} | {row['rate']:.1f} {row['unit']} | {', '.join(f'{m:.0f}' for m in row['peak_mb'])} |")
    (root / "scale.json").write_text(json.dumps({"parameters": params, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
