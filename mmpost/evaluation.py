"""Held-out evaluation: greedy and sampled decoding, every reward component, saved samples."""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mmpost.algos.kl import kl_k3, sequence_kl
from mmpost.config import EvalConfig
from mmpost.policy import eval_mode
from mmpost.rewarding import score_rollout
from mmpost.types import MEDIA_AND_TEXT


def _mean(values: list) -> float | None:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return sum(kept) / len(kept) if kept else None


@torch.no_grad()
def evaluate(policy, rows: list[dict], rewards: dict, weights: dict, cfg: EvalConfig, metric: str,
             breakdown: str = "") -> dict:
    """Mean of every reward and component on ``rows``, greedy and (optionally) sampled at T=1.

    Returns ``{"greedy": {name: mean}, "sampled": {...}, "per_sample": {...}, "samples": [...]}``;
    ``per_sample`` keeps each row's ``metric`` score so runs can be compared pairwise. With
    ``breakdown`` (a row column, e.g. a question type), ``"by": {mode: {value: mean metric}}`` too.
    """
    with eval_mode(policy.model):
        modes = {"greedy": True, **({"sampled": False} if cfg.sampled else {})}
        out: dict = {"per_sample": {}, "samples": []}
        for mode, greedy in modes.items():
            components: dict[str, list] = {}
            starts = range(0, len(rows), cfg.batch_size)
            for start in tqdm(starts, desc=f"evaluating ({mode}, {len(rows)} rows)", unit="batch", leave=False,
                              disable=len(starts) < 2):
                chunk = rows[start:start + cfg.batch_size]
                rollout = policy.rollout(chunk, 1, temperature=1.0, greedy=greedy)
                score_rollout(rollout, rewards, weights)
                for key, values in rollout.reward_components.items():
                    components.setdefault(key, []).extend(values)
                if mode == "greedy" and start == 0 and cfg.samples_to_save > 0:
                    details = getattr(_raw_scores(rewards, metric, rollout, cfg.samples_to_save), "details", [])
                    for i, row in enumerate(chunk[:cfg.samples_to_save]):
                        total = float(rollout.rewards[i])
                        out["samples"].append({"row": row, "output": rollout.outputs[i],
                                               "reward": rollout.reward_components[metric][i],
                                               "rewards": {k: v[i] for k, v in rollout.reward_components.items()},
                                               "total": None if math.isnan(total) else total,
                                               **(details[i] if i < len(details) else {})})
            out[mode] = {key: _mean(values) for key, values in components.items()}
            out["per_sample"][mode] = components.get(metric, [])
            if breakdown:
                groups: dict[str, list] = {}
                for row, score in zip(rows, out["per_sample"][mode]):
                    groups.setdefault(str(row.get(breakdown)), []).append(score)
                out.setdefault("by", {})[mode] = {value: _mean(scores) for value, scores in sorted(groups.items())}
    if breakdown:
        out["by"]["column"] = breakdown
    return out


def blind_baseline(completions: list, rows: list[dict], reward) -> float | None:
    """Mean ``reward`` of fixed, input-blind ``completions`` (one per row; e.g. the mean training box,
    the majority answer): the score a model ignoring its input would reach."""
    columns = {k: [row[k] for row in rows] for k in rows[0] if k not in MEDIA_AND_TEXT}
    return _mean(reward(prompts=[row["prompt"] for row in rows], completions=completions, **columns))


@torch.no_grad()
def heldout_kl(policy, reference, rows: list[dict], cfg: EvalConfig) -> dict:
    """KL of ``policy`` to ``reference`` (e.g. RL model vs the model RL started from) on held-out
    rows: outputs sampled at T=1, per output the mean over its steps of ``k1 = log p - log p_ref``
    (an unbiased estimate of the per-step KL; Carve3D's measure) and of the non-negative ``k3``."""
    with eval_mode(policy.model):
        k1, k3 = [], []
        for start in range(0, len(rows), cfg.batch_size):
            rollout = policy.rollout(rows[start:start + cfg.batch_size], 1, temperature=1.0)
            ref = reference.logprobs(rollout).cpu()
            mask = rollout.mask.to(ref.dtype)
            k1 += sequence_kl(rollout.logprobs, ref, mask).tolist()
            k3 += ((kl_k3(rollout.logprobs, ref) * mask).sum(-1) / mask.sum(-1).clamp(min=1)).tolist()
    return {"k1": _mean(k1), "k3": _mean(k3)}


def _raw_scores(rewards: dict, metric: str, rollout, n: int):
    """Re-score the first ``n`` samples with the metric's reward for its per-sample details
    (renders, failure reasons); cheap, since the reward caches what it just rendered."""
    n = min(len(rollout), n)
    part = rollout.subset(torch.arange(n))
    return rewards[metric](prompts=part.prompts, completions=part.outputs, **part.columns)


def _save_image(image: torch.Tensor, path: Path) -> None:
    """Write a [3, H, W] image in [0, 1] as a PNG."""
    from PIL import Image

    Image.fromarray((image.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()).save(path)


def save_samples(directory: Path, samples: list[dict]) -> None:
    """Write each sample's input image, output, rendered output or episode GIF (when any) and reward."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "samples.jsonl").open("w") as f:
        for i, sample in enumerate(samples):
            for j, image in enumerate(sample["row"].get("images", [])):
                image.save(directory / f"{i:03d}_input{j}.png")
            for j, wave in enumerate(sample["row"].get("audios", [])):  # playable in the run report
                import soundfile

                soundfile.write(directory / f"{i:03d}_input{j}.wav", np.asarray(wave, dtype=np.float32),
                                sample["row"].get("audio_sampling_rate", 16000))
            for j, clip in enumerate(sample["row"].get("videos", [])):  # [T, C, H, W], 0-255
                frames = [Image.fromarray(np.asarray(f, dtype=np.uint8).transpose(1, 2, 0)) for f in np.asarray(clip)]
                frames[0].save(directory / f"{i:03d}_input{j}.gif", save_all=True, append_images=frames[1:],
                               duration=250, loop=0)
            if isinstance(sample["output"], torch.Tensor):  # a generated image [3, H, W] in [0, 1]
                _save_image(sample["output"], directory / f"{i:03d}_output.png")
                sample["output"] = f"{i:03d}_output.png"
            elif isinstance(sample["output"], dict) and sample["output"].get("frames"):
                sample["output"] = dict(sample["output"])
                frames = [Image.fromarray(frame) for frame in sample["output"].pop("frames")]
                frames[0].save(directory / f"{i:03d}_episode.gif", save_all=True, append_images=frames[1:],
                               duration=50, loop=0)
            if sample.get("png"):
                (directory / f"{i:03d}_render.png").write_bytes(base64.b64decode(sample["png"]))
            columns = {k: v for k, v in sample["row"].items() if k != "completion" and _plain(v)}
            if isinstance(sample["row"].get("tile"), torch.Tensor):  # the training rendering, for comparison
                _save_image(sample["row"]["tile"], directory / f"{i:03d}_reference.png")
            f.write(json.dumps({"index": i, "output": sample["output"], "reward": sample["reward"],
                                "total": sample.get("total"), "rewards": sample.get("rewards", {}),
                                "reason": sample.get("reason"), "reference": sample["row"].get("completion"),
                                **columns}) + "\n")


def _plain(value) -> bool:
    """A column worth keeping with a sample: text, a number, or a (nested) list of them (boxes, choices)."""
    if isinstance(value, (str, int, float)):
        return True
    return isinstance(value, list) and len(value) <= 64 and all(_plain(v) for v in value)


def print_table(results: dict) -> None:
    """Before/after table of every metric, greedy and sampled."""
    before, after = results.get("before", {}), results.get("after", {})
    print("\nheld-out evaluation")
    if results.get("blind") is not None:
        print(f"input-blind baseline ({results['blind']['what']}): {results['blind']['score']:.3f}")
    print(f"{'metric':<34}{'before':>10}{'after':>10}{'delta':>10}")
    for mode in ("greedy", "sampled"):
        for key in sorted(after.get(mode, {})):
            b, a = before.get(mode, {}).get(key), after[mode][key]
            fmt = lambda v: f"{v:10.3f}" if v is not None else f"{'-':>10}"  # noqa: E731
            delta = a - b if a is not None and b is not None else None
            print(f"{mode + ' ' + key:<34}{fmt(b)}{fmt(a)}{fmt(delta)}")
    by = after.get("by", {})
    for mode in ("greedy", "sampled"):
        if mode in by:
            shown = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
            groups = ", ".join(f"{value} {shown(before.get('by', {}).get(mode, {}).get(value))} -> {shown(score)}"
                               for value, score in by[mode].items())
            print(f"{mode} by {by['column']}: {groups}")
    for stage, kl in results.get("kl_to_start", {}).items():
        print(f"KL of the model after stage {stage!r} to its start (held-out, per step): "
              f"k1 {kl['k1']:.3g}, k3 {kl['k3']:.3g}")
