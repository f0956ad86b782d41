"""mmpost vs TRL on one GPU at real model shapes: one table, within one lent device window (~8 min).

    python scripts/gpu_bench.py                 # on a GPU: a Qwen2-VL-2B-shaped VLM, bf16, gradient checkpointing
    python scripts/gpu_bench.py --sizes 2b,7b   # also the 7B shape (fp32 weights + AdamW: ~115 GB before activations)
    python scripts/gpu_bench.py --stand-in      # CPU, the tasks' tiny models: checks the script and the table

Models are random-initialised from the configs of real checkpoints (Qwen2-VL-2B / 7B: text and vision
towers at their real widths and depths) with the chart2code task's tokenizer and processor, so the
vocabulary (and the LM head) is the tiny tokenizer's: nothing is downloaded. Both systems load fp32
weights and train with bf16 autocast, as mmpost does, on the same rows, prompts, group size, lengths and
learning rate (the cases of ``mmpost bench``, :mod:`mmpost.tools.bench.trl`), alternating, each run in a
fresh process. Cases: GRPO on chart2code (images in the prompts, the sandboxed chart reward) with HF
generation, and with the colocated vLLM engine where vLLM is installed; SFT on chart2code demonstrations,
padded and padding-free (mmpost packs the rows; TRL refuses padding-free training on vision datasets, so
its row there is padded again); both systems use FlashAttention 2 where the flash-attn package is installed.
Per case: samples/s, generated (GRPO) or trained (SFT) tokens/s, the step split (generate / reward /
update), peak GPU memory, and model FLOP utilisation against the GPU's dense bf16 peak:
``flops_per_token * tokens/s / peak`` with 6N per trained token for SFT and 8N per generated token for
GRPO (2N to sample it, 6N to train on it), N the parameter count.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

# text (hidden, layers, heads, kv heads, MLP width) and vision (depth, width, heads) of the real checkpoints
SHAPES = {
    "2b": dict(hidden=1536, layers=28, heads=12, kv_heads=2, intermediate=8960, vision=(32, 1280, 16)),
    "7b": dict(hidden=3584, layers=28, heads=28, kv_heads=4, intermediate=18944, vision=(32, 1280, 16)),
}
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "4090": 165e12}
SYSTEMS = ("mmpost", "trl")


def build(shape: str, out: Path) -> tuple[str, int]:
    """A random-initialised Qwen2-VL of ``shape`` with chart2code's processor, saved to ``out``."""
    import torch
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    from mmpost.models.tiny_qwen2vl import build_config
    from mmpost.tools.bench.trl import _model_dir

    processor = AutoProcessor.from_pretrained(_model_dir("chart2code"))
    config = build_config(processor.tokenizer, "tiny")
    s = SHAPES[shape]
    text = config.text_config
    text.hidden_size, text.num_hidden_layers, text.intermediate_size = s["hidden"], s["layers"], s["intermediate"]
    text.num_attention_heads, text.num_key_value_heads = s["heads"], s["kv_heads"]
    head_dim = s["hidden"] // s["heads"]
    quarter = head_dim // 2 // 4
    text.rope_parameters["mrope_section"] = [head_dim // 2 - 2 * quarter, quarter, quarter]
    depth, width, heads = s["vision"]
    vision = config.vision_config
    vision.depth, vision.embed_dim, vision.num_heads, vision.hidden_size = depth, width, heads, s["hidden"]
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = text.eos_token_id
    model.generation_config.pad_token_id = text.pad_token_id
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return str(out), sum(p.numel() for p in model.parameters())


def cases(model: str, gpu: bool) -> dict[str, tuple[str, dict] | str]:
    """Label -> (``mmpost bench`` case, settings), or the reason the case cannot run here."""
    settings = {"model": model, "bf16": gpu, "gradient_checkpointing": gpu}
    if gpu and importlib.util.find_spec("flash_attn"):  # packed rows then run variable-length
        settings["attn_implementation"] = "flash_attention_2"
    vllm = (("grpo_vlm", {**settings, "vllm": True}) if gpu and importlib.util.find_spec("vllm")
            else "needs a GPU and the [vllm] extra")
    return {"GRPO, HF generate": ("grpo_vlm", settings), "GRPO, colocated vLLM": vllm, "SFT": ("sft_vlm", settings),
            "SFT, padding-free (TRL padded)": ("sft_vlm_padding_free", settings)}


def measure(label: str, case: str, settings: dict, steps: int, repeats: int) -> dict:
    from mmpost.tools.bench.trl import _median, _worker

    runs: dict[str, list] = {s: [] for s in SYSTEMS}
    for r in range(repeats):
        for system in SYSTEMS if r % 2 == 0 else reversed(SYSTEMS):
            runs[system].append(_worker(system, case, steps, settings))
            print(f"  {label}, {system}: {runs[system][-1]}", flush=True)
    return {system: _median(results) for system, results in runs.items()}


def mfu(result: dict, kind: str, params: int, peak: float | None) -> float | None:
    if not peak:
        return None
    return (8 if kind == "grpo_vlm" else 6) * params * result["tokens_per_s"] / peak


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stand-in", action="store_true", help="CPU, the tasks' tiny models (the suite's check)")
    parser.add_argument("--sizes", default="2b", help="model shapes: 2b, 7b (comma-separated)")
    parser.add_argument("--steps", type=int, default=4, help="steps per run (the first is dropped)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", default="", help="write the report here")
    args = parser.parse_args()
    import torch

    from mmpost.tools.bench.trl import _machine

    gpu = torch.cuda.is_available() and not args.stand_in
    if not gpu and not args.stand_in:
        sys.exit("no GPU here: run with --stand-in to check the script on the CPU")
    started = time.time()
    device = torch.cuda.get_device_name() if gpu else "cpu (stand-in)"
    peak = next((v for k, v in PEAK_BF16.items() if k in device), None) if gpu else None
    report = {"date": time.strftime("%Y-%m-%d"), "device": device, "peak_bf16_flops": peak, "machine": _machine(),
              "versions": {m: importlib.metadata.version(m) for m in ("mmpost", "torch", "transformers", "trl")},
              "models": {}}
    with tempfile.TemporaryDirectory(prefix="mmpost-gpu-bench-") as tmp:
        for shape in args.sizes.split(",") if gpu else ["tiny"]:
            if gpu:
                model, params = build(shape, Path(tmp) / shape)
            else:
                from mmpost.tools.bench.trl import _model_dir
                from transformers import AutoConfig, AutoModelForImageTextToText

                model = _model_dir("chart2code")
                params = sum(p.numel() for p in AutoModelForImageTextToText.from_config(
                    AutoConfig.from_pretrained(model)).parameters())
            rows = {}
            for label, spec in cases(model, gpu).items():
                if isinstance(spec, str):
                    rows[label] = {"skipped": spec}
                    continue
                rows[label] = measure(label, *spec, args.steps, args.repeats)
                for system in SYSTEMS:
                    rows[label][system]["mfu"] = mfu(rows[label][system], spec[0], params, peak)
            report["models"][shape] = {"parameters": params, "cases": rows}
    report["seconds"] = round(time.time() - started)
    print_table(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


COLUMNS = [("samples/s", "completions_per_s", "samples_per_s"), ("tokens/s", "tokens_per_s"),
           ("step s", "step_s"), ("generate s", "generate_s"), ("reward s", "reward_s"), ("update s", "update_s"),
           ("peak GPU MiB", "peak_gpu_mb"), ("MFU", "mfu")]


def print_table(report: dict) -> None:
    print(f"\n{report['date']}, {report['device']}, mmpost {report['versions']['mmpost']}, "
          f"torch {report['versions']['torch']}, transformers "
          f"{report['versions']['transformers']}, TRL {report['versions']['trl']} ({report['seconds']} s)")
    print("| model | case | system | " + " | ".join(c[0] for c in COLUMNS) + " | samples/s vs TRL |")
    print("|---" * (len(COLUMNS) + 4) + "|")
    for shape, entry in report["models"].items():
        name = f"{shape} ({entry['parameters'] / 1e9:.2f}B)" if entry["parameters"] > 1e8 else \
            f"{shape} ({entry['parameters'] / 1e6:.1f}M)"
        for label, systems in entry["cases"].items():
            if "skipped" in systems:
                print(f"| {name} | {label} | - | skipped: {systems['skipped']} |" + " |" * len(COLUMNS))
                continue
            for system in SYSTEMS:
                numbers = systems[system]
                cells = []
                for _, *keys in COLUMNS:
                    value = next((numbers[k] for k in keys if numbers.get(k) is not None), None)
                    cells.append("-" if value is None else f"{value:.1%}" if keys == ["mfu"] else f"{value:.3g}")
                rate = [numbers.get("completions_per_s") or numbers.get("samples_per_s"),
                        systems["trl"].get("completions_per_s") or systems["trl"].get("samples_per_s")]
                print(f"| {name} | {label} | {system} | " + " | ".join(cells) + f" | {rate[0] / rate[1]:.2f}x |")


if __name__ == "__main__":
    main()
