"""``mmpost report RUN_DIR``: one HTML page (and PNGs) showing what a run did.

Writes ``RUN_DIR/report/index.html`` with: loss / reward / KL / entropy curves over all steps
(stage boundaries marked), one curve per reward component, the held-out table (before, after each
stage, after; greedy and sampled; the input-blind baseline), and a gallery of held-out samples
before and after training: input images, the model's output, its rendering (charts, generated
images, robot episodes as GIFs), boxes drawn on the image for grounding, audio players for
audio clips, and the reward with its reason. Everything is a relative link, so the folder can be
copied or served as is.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

CURVES = {  # file -> (title, metric-name predicate)
    "losses": ("Losses", lambda k: k.startswith("loss/")),
    "rewards": ("Reward (total and per function)", lambda k: k.startswith("reward/") and k.endswith("/mean")
                and k.count("/") == 2),
    "components": ("Reward components", lambda k: k.startswith("reward/") and k.endswith("/mean") and k.count("/") == 3),
    "kl_entropy": ("KL and entropy", lambda k: k.startswith(("kl", "entropy"))),
    "heldout": ("Held-out greedy metric during training (eval.every)", lambda k: k.startswith("eval/")),
}


def _curves(metrics: list[dict], out: Path) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    offsets, total = {}, 0
    for m in metrics:  # one step axis across stages
        offsets.setdefault(m["stage_index"], total)
        total = max(total, offsets[m["stage_index"]] + m["step"])
    x = [offsets[m["stage_index"]] + m["step"] for m in metrics]
    figures = []
    for name, (title, wanted) in CURVES.items():
        keys = sorted({k for m in metrics for k in m if wanted(k) and isinstance(m[k], (int, float))})
        if not keys:
            continue
        fig, ax = plt.subplots(figsize=(7, 3.2), dpi=100)
        for key in keys:
            points = [(xi, m[key]) for xi, m in zip(x, metrics) if isinstance(m.get(key), (int, float))]
            ax.plot(*zip(*points), label=key, linewidth=1.2)
        for stage_index, start in offsets.items():
            if start:
                ax.axvline(start + 0.5, color="grey", linestyle=":", linewidth=1)
        ax.set_title(title)
        ax.set_xlabel("step (all stages)")
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        fig.savefig(out / f"{name}.png")
        plt.close(fig)
        figures.append((title, f"{name}.png"))
    return figures


def _table(results: dict) -> str:
    evaluations = [k for k in results if k == "before" or k.startswith("after")]
    evaluations = ["before", *sorted(k for k in evaluations if k.startswith("after_")), "after"]
    evaluations = [k for k in evaluations if k in results]
    rows = []
    for mode in ("greedy", "sampled"):
        keys = sorted({k for e in evaluations for k in results[e].get(mode, {})})
        for key in keys:
            cells = "".join(f"<td>{results[e].get(mode, {}).get(key, float('nan')):.3f}</td>"
                            if results[e].get(mode, {}).get(key) is not None else "<td>-</td>" for e in evaluations)
            rows.append(f"<tr><th>{mode} {html.escape(key)}</th>{cells}</tr>")
    head = "".join(f"<th>{html.escape(e)}</th>" for e in evaluations)
    blind = results.get("blind")
    note = (f"<p>Input-blind baseline ({html.escape(str(blind['what']))}): {blind['score']:.3f}</p>"
            if blind else "")
    return f"<table><tr><th>metric</th>{head}</tr>{''.join(rows)}</table>{note}"


def _boxes_image(sample_dir: Path, index: int, output: str, row: dict, out: Path) -> str | None:
    """Grounding: the predicted (red) and gold (green) boxes drawn on the input image."""
    image_path = sample_dir / f"{index:03d}_input0.png"
    if not isinstance(row.get("box"), list) or not row["box"] or not image_path.exists():
        return None
    from PIL import Image, ImageDraw

    from mmpost.rewards.grounding import parse_boxes

    image = Image.open(image_path).convert("RGB")
    draw = ImageDraw.Draw(image)
    for gold in [row["box"]] if isinstance(row["box"][0], (int, float)) else row["box"]:
        draw.rectangle(list(gold), outline=(0, 200, 0), width=2)
    for box in parse_boxes(output, row.get("box_format", "pixels"), image.size):
        draw.rectangle(list(box), outline=(220, 0, 0), width=2)
    path = out / f"boxes_{sample_dir.name}_{index:03d}.png"
    image.resize((image.width * 2, image.height * 2), Image.NEAREST).save(path)
    return path.name


def _gallery(run_dir: Path, name: str, out: Path, limit: int) -> str:
    sample_dir = run_dir / "samples" / name
    if not (sample_dir / "samples.jsonl").exists():
        return ""
    cards = []
    for line in (sample_dir / "samples.jsonl").read_text().splitlines()[:limit]:
        sample = json.loads(line)
        i, media = sample["index"], []
        for file in sorted(sample_dir.glob(f"{i:03d}_*")):
            link = f"../samples/{name}/{file.name}"
            if file.suffix in (".png", ".gif", ".jpg"):
                media.append(f'<figure><img src="{link}"><figcaption>{file.stem.split("_", 1)[1]}</figcaption></figure>')
            elif file.suffix == ".wav":
                media.append(f'<audio controls src="{link}"></audio>')
        output = sample.get("output")
        if isinstance(output, str):
            drawn = _boxes_image(sample_dir, i, output, sample, out)
            if drawn:
                media.append(f'<figure><img src="{drawn}"><figcaption>boxes (red: model, green: gold)</figcaption></figure>')
        text = output if isinstance(output, str) else json.dumps(output)
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        scores = {"total": sample.get("total", sample.get("reward")), **sample.get("rewards", {})}
        scores = " · ".join(f"{html.escape(k)} {fmt(v)}" for k, v in scores.items())
        reference = sample.get("reference") or sample.get("answer") or sample.get("box")
        gold = (f'<p>reference</p><pre class="gold">{html.escape(str(reference))[:1500]}</pre>'
                if reference is not None else "")
        cards.append(
            f'<div class="card"><div class="media">{"".join(media)}</div>'
            f'<p>output</p><pre>{html.escape(str(text))[:1500]}</pre>{gold}'
            f'<p>{scores}; {html.escape(str(sample.get("reason") or ""))}</p></div>')
    return f"<h3>{html.escape(name)}</h3>" + "".join(cards)


def write_report(run_dir: str | Path, samples: int = 8) -> Path:
    """Write ``RUN_DIR/report/index.html`` (and its PNGs); returns its path."""
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.jsonl").exists():
        raise FileNotFoundError(f"{run_dir} has no metrics.jsonl: not a run directory")
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    metrics = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        try:
            metrics.append(json.loads(line))
        except ValueError:  # a line cut short by a crash
            continue
    results = json.loads((run_dir / "results.json").read_text()) if (run_dir / "results.json").exists() else {}
    config = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").exists() else ""
    figures = _curves(metrics, out) if metrics else []
    galleries = "".join(_gallery(run_dir, name, out, samples)
                        for name in ["before", *sorted(p.name for p in (run_dir / "samples").glob("after_*")), "after"]
                        if (run_dir / "samples").exists())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>mmpost run {html.escape(run_dir.name)}</title>
<style>body{{font-family:sans-serif;margin:24px;max-width:1200px}}img{{max-width:100%}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
.card{{border:1px solid #ddd;margin:8px 0;padding:8px}}.media{{display:flex;gap:8px;flex-wrap:wrap}}
figure{{margin:0}}figure img{{max-height:180px}}pre{{white-space:pre-wrap;background:#f6f6f6;padding:6px;max-height:220px;overflow:auto}}pre.gold{{background:#eef7ee}}</style>
</head><body><h1>mmpost run <code>{html.escape(run_dir.name)}</code></h1>
<h2>Curves</h2>{''.join(f'<h3>{html.escape(t)}</h3><img class="curve" src="{f}">' for t, f in figures) or '<p>no steps logged</p>'}
<h2>Held-out evaluation</h2>{_table(results) if results else '<p>no results yet</p>'}
<h2>Samples</h2>{galleries or '<p>no samples</p>'}
<h2>Config</h2><pre>{html.escape(config)}</pre></body></html>"""
    (out / "index.html").write_text(page)
    return out / "index.html"


def write_model_card(run_dir: Path, cfg, results: dict) -> Path:
    """``final/README.md``: what the model is, how it was trained and how it scores (Hugging Face
    model-card layout, YAML metadata first)."""
    run_dir = Path(run_dir)
    from mmpost.engine import stage_steps
    from mmpost.registry import TASKS

    stages = "\n".join(f"| {s.name} | {s.kind} | {stage_steps(s, cfg.max_steps)} | {s.batch_size} | {s.optim.lr:g} |"
                       for s in cfg.stages)
    names = cfg.rewards or list(TASKS.get(cfg.task).rewards)
    weights = cfg.reward_weights or [1.0] * len(names)
    files = {spec.rpartition(":")[2]: spec for spec in cfg.reward_files}
    rewards = ", ".join(f"`{n}` × {w:g}" + (f" (from `{files[n]}`)" if n in files else "") for n, w in zip(names, weights))
    rows = []
    for mode in ("greedy", "sampled"):
        for key, after in sorted(results.get("after", {}).get(mode, {}).items()):
            before = results.get("before", {}).get(mode, {}).get(key)
            fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
            rows.append(f"| {mode} {key} | {fmt(before)} | {fmt(after)} |")
    trained = ", ".join(f"{n} in stage {stage}" for stage, n in results.get("training_rows", {}).items() if n)
    data = (f"{cfg.data.path}" + (f", held-out rows from {cfg.data.eval_path}" if cfg.data.eval_path else "")
            if cfg.data.path else f"seeded synthetic {cfg.task} data")
    data += f" (training rows: {trained})" if trained else ""
    skipped = results.get("skipped_rows", {})
    data += "".join(f"; {n} malformed rows of {file} skipped (data.skip_bad_rows)" for file, n in skipped.items())
    card = f"""---
library_name: transformers
tags: [mmpost, {cfg.task}]
base_model: {cfg.model or 'mmpost tiny default (built offline)'}
---
# {cfg.task} model trained with mmpost

- **Task**: `{cfg.task}` (held-out split of {cfg.data.eval_size} rows)
- **Base model**: {cfg.model or "the task's tiny default, random-initialised offline"}
- **Data**: {data}
- **Adapters**: {f"LoRA r={cfg.peft.r} on {', '.join(cfg.peft.target_modules)} (merged into these weights)" if cfg.peft.r else "none (full fine-tuning)"}
- **Rewards**: {rewards or "none"}
- **Seed**: {cfg.seed}

## Recipe

| stage | kind | steps | batch | lr |
|---|---|---|---|---|
{stages}

## Held-out evaluation

| metric | before | after |
|---|---|---|
{chr(10).join(rows)}

Reproduce the run: `mmpost train --config {run_dir / "config.yaml"}` (the run's complete config; rewards from files
are loaded from the paths it records). Evaluate this model: `mmpost eval --model {run_dir / "final"} --task {cfg.task}`.
"""
    path = run_dir / "final" / "README.md"
    path.write_text(card)
    return path
