"""``mmpost bench``: mmpost against TRL on the same model, data and settings, side by side.

Every measurement runs in a fresh subprocess (so peak RSS is that system's alone), the two
systems alternate, and each number is the median over ``repeats`` runs (this machine is shared
and noisy). Cases:

- ``grpo_vlm``: GRPO on chart2code (tiny Qwen2-VL, chart images in the prompts, the sandboxed
  ``chart_render`` reward, which has TRL's reward signature), mmpost's ``rl`` stage vs TRL's
  ``GRPOTrainer``: same weights, prompts, group size, max new tokens, temperature, batch size,
  one optimisation pass, no KL, token-mean loss (TRL ``loss_type="dapo"``), group-std-scaled
  advantages.
- ``grpo_text``: the same on the text-only arithmetic task (same tiny LM, ``answer_match``).
- ``sft_vlm``: SFT on chart2code demonstrations, mmpost's ``sft`` stage vs TRL's ``SFTTrainer``
  (prompt/completion rows with images, completion-only loss): same batch, optimizer, lr.
- ``sft_vlm_padding_free``: the same with mmpost's rows packed (``padding_free``); TRL trains padded
  (its ``SFTTrainer`` refuses padding-free training on vision datasets).
- the floor of each case (:func:`run_floor`): the model's own work of the step timed alone, the
  least any system can take with transformers' model code.
- ``scaling`` (mmpost): seconds per GRPO step as group size, completion length and image side
  double.
- the sandboxed reward: warm fork-server vs a fresh interpreter per job (:mod:`mmpost.tools.bench.sandbox`).

What differs is the implementation, not the work: TRL samples with transformers' ``generate``,
mmpost with its own decode loop (:mod:`mmpost.adapters.decoding`: each prompt encoded once per
group, inverse-CDF sampling, the boolean padding mask handed to SDPA), scores the rewards beside
the first forward pass, and steps a fused AdamW.

Per step the first one is dropped (warm-up). A step's time includes the making of its batch for both
systems. Reported: completions/s (GRPO: sampled completions per second of step time, reward included),
tokens/s (generated or trained tokens), seconds per step split into generate / reward / update
(forward, backward and optimizer), peak RSS; for the floor, its parts.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = {
    # steps, and the settings both systems share
    "grpo_vlm": dict(task="chart2code", kind="grpo", prompts=2, group=4, max_new_tokens=64, temperature=1.0, lr=1e-5),
    "grpo_text": dict(task="arithmetic", kind="grpo", prompts=2, group=4, max_new_tokens=64, temperature=1.0, lr=1e-5),
    "sft_vlm": dict(task="chart2code", kind="sft", batch=8, lr=1e-4),
    # mmpost packs the rows (padding_free); TRL trains padded: its SFTTrainer refuses padding-free
    # training on vision datasets
    "sft_vlm_padding_free": dict(task="chart2code", kind="sft", batch=8, lr=1e-4, padding_free=True),
}


def _peak_memory() -> dict:
    """Peak RSS of this process, and peak GPU memory allocated by torch when on a GPU (MiB)."""
    import resource

    import torch

    peaks = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        peaks["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return peaks


def _rows(task: str, n: int) -> list[dict]:
    import mmpost
    from mmpost.registry import REWARDS, TASKS

    cfg = mmpost.build_config(task, overrides={"data.train_size": n, "data.eval_size": 2})
    task_cls = TASKS.get(task)
    return task_cls(cfg, reward=REWARDS.get(task_cls.metric)).rows("train")


def _model_dir(task: str) -> str:
    import mmpost
    from mmpost.registry import TASKS

    return TASKS.get(task)(mmpost.build_config(task)).model_path()


# ------------------------------------------------------------------ mmpost worker

def run_mmpost(case: dict, steps: int, out: Path, image_side: int = 0) -> dict:
    """The case through ``mmpost.train`` (the real engine); per-step times from its metrics log.
    Optional case keys (``scripts/gpu_bench.py``): ``model`` (a directory), ``bf16``,
    ``gradient_checkpointing``, ``vllm`` (the colocated engine samples), ``padding_free``,
    ``attn_implementation`` (both systems load the model with it)."""
    import mmpost

    overrides = {"threads": 1, "data.train_size": 64, "data.eval_size": 2, "eval.sampled": False,
                 "checkpoint_every": 10_000, "output_dir": str(out), "sandbox_workers": 2,
                 "trackers": [],  # TRL runs with report_to=[]
                 "model": case.get("model", ""), "mixed_precision": "bf16" if case.get("bf16") else "no",
                 "gradient_checkpointing": bool(case.get("gradient_checkpointing")),
                 "padding_free": bool(case.get("padding_free")), "attn_implementation": case.get("attn_implementation", "")}
    if case.get("vllm"):
        overrides["rollout.backend"] = "vllm"
    if case["kind"] == "grpo":
        overrides.update({"sft.steps": 0, "rl.steps": steps, "rl.batch_size": case["prompts"],
                          "rl.sampling.group_size": case["group"], "rl.sampling.max_new_tokens": case["max_new_tokens"],
                          "rl.sampling.temperature": case["temperature"], "rl.optim.lr": case["lr"], "rl.kl.coef": 0.0,
                          "rl.pg.epochs": 1, "rl.pg.minibatches": 1, "rl.pg.aggregation": "token_mean"})
    else:
        overrides.update({"sft.steps": steps, "sft.batch_size": case["batch"], "sft.optim.lr": case["lr"],
                          "sft.optim.schedule": "constant", "sft.optim.warmup": 0.0, "rl.steps": 0})
    if image_side:
        overrides["image_pixels"] = image_side * image_side
    mmpost.train(case["task"], **overrides)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]  # drop warm-up
    seconds = [m["seconds"] for m in lines]
    result = {"step_s": statistics.median(seconds), **_peak_memory()}
    if case["kind"] == "grpo":
        n = case["prompts"] * case["group"]
        result.update(completions_per_s=n / result["step_s"],
                      tokens_per_s=statistics.median(m["tokens"] / m["seconds"] for m in lines),
                      generate_s=statistics.median(m["time/generate"] for m in lines),
                      reward_s=statistics.median(m["time/reward"] for m in lines),
                      update_s=statistics.median(m["time/update"] for m in lines))
    else:
        result.update(samples_per_s=case["batch"] / result["step_s"],
                      tokens_per_s=case["batch"] / result["step_s"] * _completion_tokens(case["task"]))
    return result


def _completion_tokens(task: str) -> float:
    """Mean demonstrated (completion) tokens per training row: SFT's tokens/s for both systems."""
    from transformers import AutoProcessor

    tokenizer = AutoProcessor.from_pretrained(_model_dir(task)).tokenizer
    rows = _rows(task, 64)
    return statistics.mean(len(tokenizer(r["completion"])["input_ids"]) + 1 for r in rows)  # + end of turn


# ------------------------------------------------------------------ floor worker

def run_floor(case: dict, steps: int) -> dict:
    """The model's own work in one step of the case, timed alone: its forward calls while sampling
    (no grad), the forward with grad, the backward and the optimizer step (fused AdamW), on rows and
    completion lengths like the run's. Whatever a trainer adds (processors, sampling, losses, logging)
    comes on top, so no system steps faster than this with this model code: TRL's step time over it
    is the largest speed-up over TRL any implementation can show."""
    import torch

    from mmpost.adapters.token_policy import TokenPolicy
    from mmpost.optim import adamw

    torch.manual_seed(0)
    policy = TokenPolicy.from_pretrained(case.get("model") or _model_dir(case["task"]), padding_free=bool(
        case.get("padding_free")), attn_implementation=case.get("attn_implementation", ""))
    policy.set_generation_length(case.get("max_new_tokens", 64))
    model, rows = policy.model, _rows(case["task"], 64)
    forward = _Timer()
    model.forward = forward.wrap(model.forward)  # the outermost call only: nested modules count once
    optimizer = adamw([{"params": [p for p in model.parameters() if p.requires_grad]}], case["lr"], 0.0)
    model.train()
    parts = []
    for step in range(steps):
        before = forward.total
        if case["kind"] == "grpo":
            batch = [rows[(step * case["prompts"] + i) % len(rows)] for i in range(case["prompts"])]
            rollout = policy.rollout(batch, case["group"], temperature=case["temperature"])
            generate, before = forward.total - before, forward.total
            loss = -(policy.logprobs(rollout).sum() / rollout.mask.sum())
        else:
            generate = 0.0
            loss = policy.sft_loss([rows[(step * case["batch"] + i) % len(rows)] for i in range(case["batch"])])[0]
        start = time.perf_counter()
        loss.backward()
        backward = time.perf_counter() - start
        start = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        parts.append({"generate_s": generate, "forward_s": forward.total - before, "backward_s": backward,
                      "optimizer_s": time.perf_counter() - start})
    parts = parts[1:]  # warm-up dropped, as for the systems
    result = {key: statistics.median(p[key] for p in parts) for key in parts[0]}
    result["step_s"] = statistics.median(sum(p.values()) for p in parts)
    return result


# ------------------------------------------------------------------ TRL worker

class _Timer:
    def __init__(self):
        self.total = 0.0

    def wrap(self, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.total += time.perf_counter() - start
        for attr in ("__name__", "__qualname__"):
            try:
                setattr(timed, attr, getattr(fn, attr))
            except AttributeError:
                pass
        return timed


def _trl_dataset(task: str, rows: list[dict], kind: str):
    from datasets import Dataset

    records = []
    for r in rows:
        prompt = r["prompt"][0]["content"]
        text = prompt if isinstance(prompt, str) else " ".join(c["text"] for c in prompt if c.get("type") == "text")
        record = {"prompt": [{"role": "user", "content": text}]}
        if r.get("images"):
            record["image"] = r["images"][0]
        if kind == "sft":
            record["completion"] = [{"role": "assistant", "content": r["completion"]}]
        for key in ("code", "answer"):
            if key in r:
                record[key] = r[key]
        records.append(record)
    return Dataset.from_list(records)


def run_trl(case: dict, steps: int, out: Path) -> dict:
    """The case through TRL's GRPOTrainer / SFTTrainer with a callback timing each step."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback

    torch.set_num_threads(1)
    model_dir = case.get("model") or _model_dir(case["task"])
    gpu = torch.cuda.is_available()
    rows = _rows(case["task"], 64)
    kind = case["kind"]
    step_times: list[float] = []
    generate, reward_timer, collate = _Timer(), _Timer(), _Timer()
    splits: list[tuple[float, float]] = []

    class StepTimes(TrainerCallback):
        """Each step's time as mmpost measures its own: the step plus the making of its batch. The
        Trainer collates a batch (SFT: the processor on the images and texts) before ``on_step_begin``,
        so the collator's time since the last step is added to the step's."""
        collated = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.start, self.g0, self.r0 = time.perf_counter(), generate.total, reward_timer.total
            self.batch, self.collated = collate.total - self.collated, collate.total

        def on_step_end(self, args, state, control, **kwargs):
            step_times.append(time.perf_counter() - self.start + self.batch)
            splits.append((generate.total - self.g0, reward_timer.total - self.r0))

    processor = AutoProcessor.from_pretrained(model_dir)
    # fp32 weights, bf16 autocast with bf16=True: as mmpost loads and trains it
    kernel = {"attn_implementation": case["attn_implementation"]} if case.get("attn_implementation") else {}
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32, **kernel)
    model.generate = generate.wrap(model.generate)
    common = dict(output_dir=str(out), max_steps=steps, logging_steps=1, report_to=[], save_strategy="no",
                  use_cpu=not gpu, bf16=bool(case.get("bf16")),
                  gradient_checkpointing=bool(case.get("gradient_checkpointing")), learning_rate=case["lr"],
                  lr_scheduler_type="constant", warmup_steps=0, dataloader_num_workers=0, seed=0)
    if kind == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        from mmpost.registry import REWARDS
        from mmpost.registry import TASKS

        reward_name = TASKS.get(case["task"]).metric
        reward = REWARDS.get(reward_name)
        reward_fn = reward_timer.wrap(reward)
        reward_fn.__name__ = reward_name
        config = GRPOConfig(**common, per_device_train_batch_size=case["prompts"] * case["group"],
                            num_generations=case["group"], max_completion_length=case["max_new_tokens"],
                            temperature=case["temperature"], num_iterations=1, beta=0.0, loss_type="dapo",
                            scale_rewards="group", top_k=0, top_p=1.0,
                            **({"use_vllm": True, "vllm_mode": "colocate"} if case.get("vllm") else {}))
        trainer = GRPOTrainer(model=model, reward_funcs=[reward_fn], args=config,
                              train_dataset=_trl_dataset(case["task"], rows, kind), processing_class=processor,
                              callbacks=[StepTimes()])
    else:
        from trl import SFTConfig, SFTTrainer

        config = SFTConfig(**common, per_device_train_batch_size=case["batch"], max_length=None,
                           completion_only_loss=True)
        trainer = SFTTrainer(model=model, args=config, train_dataset=_trl_dataset(case["task"], rows, kind),
                             processing_class=processor, callbacks=[StepTimes()])
    trainer.data_collator = collate.wrap(trainer.data_collator)
    trainer.train()
    seconds = step_times[1:]
    result = {"step_s": statistics.median(seconds), **_peak_memory()}
    logs = [h for h in trainer.state.log_history if "loss" in h]
    if kind == "grpo":
        n = case["prompts"] * case["group"]
        lengths = [h.get("completions/mean_length", case["max_new_tokens"]) for h in logs][1:] or [case["max_new_tokens"]]
        result.update(completions_per_s=n / result["step_s"],
                      tokens_per_s=statistics.median(n * length / s for length, s in zip(lengths, seconds)),
                      generate_s=statistics.median(g for g, _ in splits[1:]),
                      reward_s=statistics.median(r for _, r in splits[1:]))
        result["update_s"] = result["step_s"] - result["generate_s"] - result["reward_s"]
    else:
        result.update(samples_per_s=case["batch"] / result["step_s"],
                      tokens_per_s=case["batch"] / result["step_s"] * _completion_tokens(case["task"]))
    return result


# ------------------------------------------------------------------ orchestration

def _worker(system: str, case_name: str, steps: int, extra: dict, device: str = "auto") -> dict:
    """Run one measurement in a fresh interpreter (``device="cpu"``: with no GPU visible); its JSON result."""
    with tempfile.TemporaryDirectory(prefix="mmpost-bench-") as tmp:
        spec = json.dumps({"system": system, "case": case_name, "steps": steps, "extra": extra, "out": tmp})
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        if device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        if env.get("MMPOST_HOME"):  # (the worker runs elsewhere)
            env["MMPOST_HOME"] = str(Path(env["MMPOST_HOME"]).resolve())
        # cwd: the temp directory, so `-m` imports the installed mmpost, never a checkout the bench was started in
        done = subprocess.run([sys.executable, "-m", "mmpost.tools.bench.trl", spec], capture_output=True, text=True,
                              env=env, cwd=tmp)
        if done.returncode != 0:
            raise RuntimeError(f"bench worker {system}/{case_name} failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])


def _median(results: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in results) for k in results[0]}


def run(quick: bool = False, repeats: int = 3, cases: list[str] | None = None, scaling: bool = True,
        out: Path | None = None, device: str = "auto") -> dict:
    """Every case for both systems and the floor (alternating, ``repeats`` times), the scaling sweep,
    the table. ``device``: "cpu" hides any GPU from the runs, "cuda" requires one, "auto" uses one if
    present (the tiny models; real sizes on a GPU: ``scripts/gpu_bench.py``)."""
    import torch

    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device {device!r}: choose auto, cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("mmpost bench --device cuda: torch sees no GPU on this machine")
    steps = 3 if quick else 8
    repeats = 1 if quick else repeats
    used = "cpu" if device == "cpu" or not torch.cuda.is_available() else torch.cuda.get_device_name()
    report: dict = {"steps": steps, "repeats": repeats, "device": used, "cases": {}, "machine": _machine()}
    for name in cases or list(CASES):
        runs: dict[str, list] = {"mmpost": [], "trl": [], "floor": []}
        for r in range(repeats):
            order = ("mmpost", "trl", "floor") if r % 2 == 0 else ("trl", "mmpost", "floor")
            for system in order:
                runs[system].append(_worker(system, name, steps, {}, device))
                print(f"  {name} {system} run {r + 1}: {_short(runs[system][-1])}", flush=True)
        report["cases"][name] = {s: _median(v) for s, v in runs.items()}
    if scaling:
        report["scaling"] = _scaling(steps, device)
    print_table(report)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=1))
        print(f"wrote {out}")
    return report


def _scaling(steps: int, device: str) -> dict:
    base = dict(CASES["grpo_vlm"])
    points = {"base": {}, "group x2": {"group": base["group"] * 2},
              "length x2": {"max_new_tokens": base["max_new_tokens"] * 2}, "image side x2": {"image_side": 224}}
    out = {}
    for label, change in points.items():
        out[label] = _worker("mmpost", "grpo_vlm", steps, change, device)["step_s"]
        print(f"  scaling {label}: {out[label]:.2f} s/step", flush=True)
    return out


def _short(result: dict) -> str:
    return ", ".join(f"{k} {v:.3g}" for k, v in result.items())


def _machine() -> dict:
    import platform

    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "load_avg": os.getloadavg()}


def print_table(report: dict) -> None:
    print(f"\nmmpost vs TRL (median of {report['repeats']}, {report['steps']} steps each, first dropped; "
          f"1 torch thread; {report['machine']['cpus']} CPUs; device {report.get('device', 'cpu')})")
    print(f"{'case':<10} {'metric':<18} {'mmpost':>10} {'TRL':>10} {'mmpost/TRL':>11}")
    for name, systems in report["cases"].items():
        mine, theirs = systems["mmpost"], systems["trl"]
        for key in ("completions_per_s", "samples_per_s", "tokens_per_s", "step_s", "generate_s", "reward_s",
                    "update_s", "peak_rss_mb", "peak_gpu_mb"):
            if key in mine and key in theirs:
                ratio = mine[key] / theirs[key] if theirs[key] else float("nan")
                print(f"{name:<10} {key:<18} {mine[key]:>10.3f} {theirs[key]:>10.3f} {ratio:>10.2f}x")
        floor = systems.get("floor")
        if floor:  # the model's own work alone: no system steps faster
            print(f"{name:<10} {'floor step_s':<18} {floor['step_s']:>10.3f}   model alone: " + " / ".join(
                f"{key[:-2]} {floor[key]:.3f}" for key in ("generate_s", "forward_s", "backward_s", "optimizer_s")
                if floor.get(key)) + f"; largest possible speed-up over TRL {theirs['step_s'] / floor['step_s']:.2f}x, "
                f"mmpost's step is the floor + {mine['step_s'] - floor['step_s']:.3f} s")
    if "scaling" in report:
        base = report["scaling"]["base"]
        print("scaling (mmpost GRPO s/step, ratio to base): " + ", ".join(
            f"{k} {v:.2f} ({v / base:.2f}x)" for k, v in report["scaling"].items()))


def _main_worker(spec: str) -> None:
    import torch

    torch.set_num_threads(1)
    spec = json.loads(spec)
    case = {**CASES[spec["case"]], **{k: v for k, v in spec["extra"].items() if k != "image_side"}}
    out = Path(spec["out"]) / "run"
    if spec["system"] == "mmpost":
        result = run_mmpost(case, spec["steps"], out, image_side=spec["extra"].get("image_side", 0))
    elif spec["system"] == "floor":
        result = run_floor(case, spec["steps"])
    else:
        result = run_trl(case, spec["steps"], out)
    print(json.dumps(result))


if __name__ == "__main__":
    _main_worker(sys.argv[1])
