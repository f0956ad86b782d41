"""Sharded training on a GPU machine: what the suite checks on CPU processes (gloo), here with NCCL.

    python scripts/gpu_check_scale.py [--gpus N]

Checks, each printed PASS or FAIL with its numbers (exit status 1 on a FAIL):
1. arithmetic SFT then GRPO with a KL reference, one plain process vs ``sharding=fsdp`` over a group of
   one (torchrun) on the GPU: the same losses (rel. 1e-3: the GPU's kernels are not bitwise repeatable
   across launches) and final weights;
2. the same in bf16 (FSDP's mixed precision vs accelerate's autocast): finite losses, both runs learn;
3. with ``--gpus 2`` or more: two sharded processes (NCCL) vs one plain process, as 1;
4. where vLLM is installed: GRPO of a sharded group of one with a colocated engine
   (``rollout.backend=vllm``), the engine's log-probs within 0.05 of the trainer's on every step (the
   weights it is sent are the trained ones); with ``--gpus 2``: two sharded processes with an engine
   each, then one engine over both (``rollout.tensor_parallel_size=2``), then server mode (``trl
   vllm-serve`` on GPU 1, the trainer on GPU 0: NCCL cannot join two processes on one GPU, so server
   mode needs two).

Without a GPU it runs checks 1-3 on the CPU (gloo), as the suite does.
"""

from __future__ import annotations

import argparse
import json
import os
import importlib.util
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from safetensors.torch import load_file

ARGS = ["--task", "arithmetic", "--set", "data.train_size=64", "--set", "data.eval_size=8", "--set", "sft.steps=6",
        "--set", "sft.batch_size=8", "--set", "rl.steps=4", "--set", "rl.batch_size=4", "--set", "rl.sampling.group_size=4",
        "--set", "rl.sampling.max_new_tokens=24", "--set", "rl.kl.coef=0.05", "--set", "eval.sampled=false",
        "--set", "trackers=[]"]
failures = []


def report(name: str, ok: bool, detail: str) -> None:
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
    if not ok:
        failures.append(name)


def train(launcher: list[str], out: Path, extra: list[str], env: dict | None = None) -> list[dict]:
    result = subprocess.run([*launcher, "-m", "mmpost.cli", "train", *ARGS, *extra, "--output-dir", str(out)],
                            capture_output=True, text=True, env={**os.environ, **(env or {})})
    if result.returncode:
        print(result.stderr[-3000:])
        return []
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def agree(a: list[dict], b: list[dict], rel: float) -> tuple[bool, str]:
    if not a or not b or len(a) != len(b):
        return False, f"runs failed or differ in length ({len(a)} vs {len(b)} steps)"
    worst = 0.0
    for x, y in zip(a, b):
        for key in ("loss/sft", "loss/pg", "reward/total/mean"):
            if key in x:
                worst = max(worst, abs(x[key] - y[key]) / max(abs(x[key]), 1e-3))
    return worst <= rel, f"largest relative difference {worst:.2e} over {len(a)} steps"


def engine_in_sync(metrics: list[dict], tolerance: float = 0.05) -> tuple[bool, str]:
    gaps = [m["rollout/vllm_logprob_gap"] for m in metrics if "rollout/vllm_logprob_gap" in m]
    return bool(gaps) and max(gaps) < tolerance, f"{len(gaps)} RL steps, engine-trainer log-prob gaps " + \
        ", ".join(f"{g:.1e}" for g in gaps)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def check_vllm(root: Path, gpus: int) -> None:
    """Check 4: colocated engines beside sharded models, and server mode."""
    vllm = ["--set", "sharding=fsdp", "--set", "rollout.backend=vllm", "--set", "rollout.enforce_eager=true",
            "--set", "rollout.gpu_memory_utilization=0.25"]
    one = ["torchrun", "--standalone", "--nproc_per_node", "1"]
    report("fsdp + colocated vLLM, one process", *engine_in_sync(train(one, root / "vllm1", vllm)))
    if gpus < 2:
        print("SKIP vLLM with two processes and server mode: they need --gpus 2", flush=True)
        return
    two = ["torchrun", "--standalone", "--nproc_per_node", "2"]
    report("fsdp + a colocated vLLM engine per process", *engine_in_sync(train(two, root / "vllm2", vllm)))
    report("fsdp + one vLLM engine over two processes (tensor parallel)",
           *engine_in_sync(train(two, root / "vllm-tp2", [*vllm, "--set", "rollout.tensor_parallel_size=2"])))
    import mmpost

    model = mmpost.TASKS.get("arithmetic")(mmpost.build_config("arithmetic")).model_path()
    port = free_port()
    server = subprocess.Popen(["trl", "vllm-serve", "--model", str(model), "--port", str(port),
                               "--gpu_memory_utilization", "0.3", "--enforce_eager", "true"],
                              env={**os.environ, "CUDA_VISIBLE_DEVICES": "1"}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:  # (the trainer's client waits for the server to come up: rollout.server_timeout)
        served = ["--set", "rollout.backend=vllm_server", "--set", f"rollout.server_url=http://127.0.0.1:{port}"]
        metrics = train([sys.executable], root / "server", served, env={"CUDA_VISIBLE_DEVICES": "0"})
        report("vLLM server mode (trl vllm-serve on GPU 1)", *engine_in_sync(metrics))
    finally:
        server.terminate()


def weights_agree(a: Path, b: Path, atol: float) -> tuple[bool, str]:
    first, second = load_file(a / "final" / "model.safetensors"), load_file(b / "final" / "model.safetensors")
    worst = max(float((first[k].float() - second[k].float()).abs().max()) for k in first)
    return worst <= atol, f"largest weight difference {worst:.2e}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, default=1)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mmpost-scale-check-"))
    os.environ.setdefault("MMPOST_HOME", str(root / "home"))
    one = ["torchrun", "--standalone", "--nproc_per_node", "1"]
    for precision in ("no", "bf16"):
        extra = ["--set", f"mixed_precision={precision}"]
        plain = train([sys.executable], root / f"plain-{precision}", extra)
        sharded = train(one, root / f"fsdp1-{precision}", [*extra, "--set", "sharding=fsdp"])
        if precision == "no":
            report("fsdp, group of one, fp32", *agree(plain, sharded, 1e-3))
            if plain and sharded:
                report("fsdp, group of one, final weights", *weights_agree(root / "plain-no", root / "fsdp1-no", 1e-3))
        else:
            finite = bool(sharded) and all(abs(m.get("loss/sft", m.get("loss/pg", 0.0))) < 1e6 for m in sharded)
            learned = bool(sharded) and sharded[0]["loss/sft"] > [m for m in sharded if "loss/sft" in m][-1]["loss/sft"]
            report("fsdp, bf16", finite and learned, f"{len(sharded)} steps, SFT loss "
                   f"{sharded[0].get('loss/sft') if sharded else None} -> "
                   f"{[m for m in sharded if 'loss/sft' in m][-1]['loss/sft'] if sharded else None}")
    if args.gpus >= 2:
        two = ["torchrun", "--standalone", "--nproc_per_node", "2"]
        plain = train([sys.executable], root / "plain-2", [])
        sharded = train(two, root / "fsdp2", ["--set", "sharding=fsdp"])
        report("fsdp, two processes (NCCL)", *agree(plain, sharded, 1e-3))
    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("vllm"):
        check_vllm(root, args.gpus)
    else:
        print("SKIP vLLM checks: they need vLLM and a CUDA GPU", flush=True)
    print("all checks passed" if not failures else f"FAILED: {', '.join(failures)}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
