"""grounding: find the object a referring expression names and answer its box (Visual-RFT, VLM-R1).

Data: seeded scenes of coloured shapes (:mod:`mmpost.data.scenes`; the held-out split mixes new
scenes of seen colour/shape targets with targets of colour/shape pairs never targeted in
training), or a user's file (``data.path``): a JSONL of ``{"image", "expression", "box"}`` (or
COCO-style ``"bbox": [x, y, w, h]``; lists of boxes for several referents), or a COCO annotation
JSON (``images`` / ``annotations`` / ``categories``), read as one row per image and category
("every <category>", all its boxes). Reward: ``grounding_iou`` (continuous IoU, Hungarian-matched
when there are several boxes); held-out also reports ``grounding_hit`` (accuracy at IoU 0.5).
Answers are ``<answer>[x1, y1, x2, y2]</answer>`` in image pixels. Default model: a tiny LLaVA
composed offline (CLIP ViT + MLP projector + Qwen2 LM, :mod:`mmpost.models.composed_vlm`);
``--model`` takes any image-text-to-text checkpoint or ``composed:TIMM_ARCH`` for a timm tower.
Default recipe: SFT, then GRPO on the IoU.

Input-blind baseline (``results.json`` -> ``blind``): every held-out row answered with the mean
training box, the best a model ignoring the image and the expression can do on average.
"""

from __future__ import annotations

import json
from pathlib import Path

from mmpost.config import DataConfig, EvalConfig, TrainConfig
from mmpost.stages.spec import Optim, Sampling, Stage
from mmpost.data.jsonl import DataError, read_jsonl
from mmpost.data.scenes import SIDE, render, scene, split_seeds
from mmpost.data.splits import generating, split_user_rows

TRAIN_SIZE = 6000
PROMPT = "Find {}. Answer its box [x1, y1, x2, y2] in pixels."


def completion_for(boxes: list) -> str:
    """The demonstration answer for one box or a list of boxes (integers, pixels)."""
    boxes = boxes if boxes and isinstance(boxes[0], (list, tuple)) else [boxes]
    return "<answer>" + ", ".join(f"[{', '.join(str(round(v)) for v in b)}]" for b in boxes) + "</answer>"


def make_row(image, expression: str, box: list, **columns) -> dict:
    return {"prompt": [{"role": "user", "content": [{"type": "image"},
                                                    {"type": "text", "text": PROMPT.format(expression)}]}],
            "images": [image], "completion": completion_for(box), "box": box, "box_format": "pixels",
            "image_size": list(image.size), "expression": expression, **columns}


class Grounding:
    """The grounding task: data, model, rewards, metric and default recipe."""

    name = "grounding"
    builtin_models = ("composed:",)  # a timm tower + the tiny LM, composed offline
    default_model = (  # `mmpost list models`
        "composed tiny LLaVA: CLIP ViT + MLP projector + Qwen2 LM (built offline); --model: a VLM "
        "directory / hub id, or composed[:TOWER[:LM_DIR]] (TOWER: clip, clip=CLIP_DIR, a timm "
        "architecture[=WEIGHTS])")
    rewards = ["grounding_iou"]
    metric = "grounding_iou"
    ood = "scenes whose target is always a colour-shape pair never trained (half the held-out scenes are)"
    eval_rewards = ["grounding_hit"]
    solved_threshold = 0.5  # an answer counts as solved (ReLIFT, rejection sampling) from IoU 0.5

    @staticmethod
    def default_config() -> TrainConfig:
        return TrainConfig(task="grounding", stages=[
            # the tiny model's loss sits at the input-blind level for ~1500 steps before it starts
            # to use the image (README, "grounding"), hence the long SFT
            Stage(name="sft", kind="sft", steps=4000, batch_size=32,
                  optim=Optim(lr=1e-3, schedule="cosine", warmup=0.05)),
            # "<answer>[a, b, c, d]</answer>" is at most 21 tokens with EOS
            Stage(name="rl", kind="rl", steps=100, batch_size=8,
                  sampling=Sampling(group_size=8, max_new_tokens=24),
                  optim=Optim(lr=2e-5, schedule="constant")),
        ], data=DataConfig(train_size=TRAIN_SIZE, eval_size=200), eval=EvalConfig(batch_size=100),
            checkpoint_every=100)

    def __init__(self, cfg: TrainConfig, reward=None):
        self.cfg = cfg

    def model_path(self) -> str:
        """The user's ``--model`` (a directory or hub id; ``composed[:TOWER[:LM_DIR]]`` for a tower +
        LM composed offline), by default the cached tiny composed LLaVA (CLIP ViT + Qwen2 LM).

        The default is the composed model, not the tiny Qwen2-VL of chart2code: trained from scratch,
        Qwen2-VL's vision tower (rotary positions only) had not learned where things are after 1500
        SFT steps (held-out IoU 0.047, input-blind 0.045), while a ViT with learned absolute position
        embeddings does (README, "grounding"). Pretrained Qwen2-VL checkpoints ground well; pass one
        with --model.
        """
        if self.cfg.model and not self.cfg.model.startswith("composed"):
            return self.cfg.model
        from mmpost.models.composed_vlm import cached_composed_vlm

        return str(cached_composed_vlm("grounding-vlm", self._corpus, self.cfg.model or "composed", image_side=SIDE,
                                       vocab_size=400))

    def policy(self, device="cpu"):
        from mmpost.adapters.token_policy import TokenPolicy

        return TokenPolicy.for_run(self.model_path(), self.cfg, device)

    def _corpus(self) -> list[str]:
        records = [scene(s) for s in split_seeds("train", 2000)]
        return [PROMPT.format(r["expression"]) + "\n" + completion_for(r["box"]) for r in records]

    # ------------------------------------------------------------------ data

    def rows(self, split: str) -> list[dict]:
        """Rows of ``split`` ("train", "heldout" or "ood"): prompt, image, answer and the gold ``box``."""
        if self.cfg.data.path:
            return split_user_rows(self.cfg.data, split, lambda path: load_user_rows(
                path, self.cfg.data.skip_bad_rows, self.cfg.data.columns))
        size = self.cfg.data.train_size if split == "train" else self.cfg.data.eval_size
        rows = []
        for seed in generating(split_seeds(split, size), f"{self.name} {split} rows"):
            record = scene(seed, split)
            rows.append(make_row(render(record), record["expression"], record["box"], seed=seed,
                                 novel=record["novel"]))
        return rows

    def blind_completions(self, train_rows: list[dict], rows: list[dict]) -> list[str]:
        """The input-blind baseline's answer for each of ``rows``: the mean training box."""
        boxes = [r["box"] for r in train_rows if r["box"] and not isinstance(r["box"][0], (list, tuple))]
        mean = [sum(b[i] for b in boxes) / len(boxes) for i in range(4)]
        return [completion_for(mean)] * len(rows)


def _xyxy(box, where: str, key: str) -> list:
    """``box`` ([x1, y1, x2, y2], or COCO [x, y, w, h] when ``key`` is "bbox") as a validated xyxy."""
    if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(isinstance(v, (int, float)) for v in box):
        raise DataError(f"{where}: {key!r} must be 4 numbers, got {box!r}")
    x1, y1, a, b = (float(v) for v in box)
    x2, y2 = (x1 + a, y1 + b) if key == "bbox" else (a, b)
    if x2 <= x1 or y2 <= y1:
        raise DataError(f"{where}: {key!r} {box!r} has no area")
    return [x1, y1, x2, y2]


def load_user_rows(path: str, skip_bad_rows: bool = False, columns: list[str] | None = None) -> list[dict]:
    """Rows from a JSONL of referring expressions or a COCO annotation file (see the module doc)."""
    if str(path).endswith(".json"):
        return _coco_rows(Path(path))
    def convert(r: dict) -> dict:
        key = "box" if "box" in r else "bbox"
        if key not in r:
            raise DataError(f"{r['source']}: missing field 'box' (or COCO 'bbox')")
        many = isinstance(r[key], list) and r[key] and isinstance(r[key][0], (list, tuple))
        boxes = [_xyxy(b, r["source"], key) for b in (r[key] if many else [r[key]])]
        return make_row(r["image_obj"], r["expression"], boxes if many else boxes[0], source=r["source"])

    return list(read_jsonl(path, required={"image": str, "expression": str}, skip_bad_rows=skip_bad_rows, convert=convert,
                           columns=columns))


def _coco_rows(path: Path) -> list[dict]:
    """One row per (image, category) of a COCO detection file: "every <category>" and its boxes."""
    from PIL import Image

    coco = json.loads(path.read_text())
    for key in ("images", "annotations", "categories"):
        if key not in coco:
            raise DataError(f"{path}: not a COCO annotation file (no {key!r})")
    names = {c["id"]: c["name"] for c in coco["categories"]}
    boxes: dict[tuple, list] = {}
    for a in coco["annotations"]:
        boxes.setdefault((a["image_id"], a["category_id"]), []).append(
            _xyxy(a["bbox"], f"{path}: annotation {a.get('id')}", "bbox"))
    files = {i["id"]: i["file_name"] for i in coco["images"]}
    rows = []
    for (image_id, category), found in sorted(boxes.items()):
        image_path = path.parent / files[image_id]
        try:
            with Image.open(image_path) as image:
                picture = image.convert("RGB")
        except (OSError, ValueError) as error:
            raise DataError(f"{path}: image {image_path} failed to decode ({error})") from None
        rows.append(make_row(picture, f"every {names[category]}", found, source=f"{path}:{image_id}"))
    return rows
