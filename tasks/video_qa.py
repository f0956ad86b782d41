"""video_qa: answer multiple-choice questions about a short clip, reasoning first (VideoRFT).

Data: seeded clips of moving shapes (:mod:`mmpost.data.motion`: direction, order of appearance,
blink count, speed; held-out clips use unseen seeds), or
a user's JSONL of ``{"video": path, "question", "choices": [...], "answer"}`` (decoded with PyAV).
Frames go through qwen-vl-utils' ``fetch_video`` (sampling at ``FPS`` up to ``FRAMES`` frames,
resizing); a model with video input (the Qwen2-VL family: ``--model tiny-qwen2vl`` or a checkpoint)
gets them as video, a model without (the default composed tiny LLaVA, any image-only VLM) as one
2 x 2 grid image of frames 0, 2, 4 and 6 (IG-VLM's image grid). Demonstrations reason then answer:
``<think>I watch the clip. {what happens}</think><answer>{option}</answer>``.

Rewards as VideoRFT: ``choice_accuracy`` + ``format`` + ``video_semantic`` (similarity of the
reasoning, minus its first sentence, to the frames under a CLIP model; zero when the answer is
wrong). No pretrained CLIP can be downloaded here, so the default semantic model is a small
open_clip model trained contrastively on this task's frames and captions (built and cached on
first use); ``--clip-model ARCH:CHECKPOINT`` uses open_clip weights you have locally.

Input-blind baseline (``results.json`` -> ``blind``): the majority training answer per question type.
"""

from __future__ import annotations

import functools
from collections import Counter

from mmpost.config import DataConfig, EvalConfig, TrainConfig
from mmpost.stages.spec import Optim, Sampling, Stage
from mmpost.data.jsonl import DataError, media_path, read_jsonl
from mmpost.data.motion import FRAMES, SIDE, as_image, render, split_seeds, video
from mmpost.data.splits import generating, split_user_rows
from mmpost.models.tiny_qwen2vl import cached_tiny_qwen2vl

TRAIN_SIZE = 3000
FPS = 4.0  # frame sampling rate for users' video files


def frames_for_model(frames) -> "object":
    """A clip's frames as the Qwen2-VL video input, through qwen-vl-utils (resized to SIDE x SIDE)."""
    from qwen_vl_utils import fetch_video

    return fetch_video({"video": list(frames), "resized_height": SIDE, "resized_width": SIDE})


def completion_for(caption: str, answer: str) -> str:
    return f"<think>I watch the clip. {caption}</think><answer>{answer}</answer>"


GRID_FRAMES = (0, 2, 4, 6)  # every blink and both appearances of the synthetic clips fall on these
GRID_CELL = 64  # 2 x 2 cells: a 128-pixel image, 8 x 8 tokens of the composed model's ViT (4 x 4 per frame)


def frame_grid(frames, cell: int = GRID_CELL):
    """Four frames tiled 2 x 2 in time order (IG-VLM's image grid), for models without video input."""
    from PIL import Image

    picked = [frames[round(t * (len(frames) - 1) / (FRAMES - 1))] for t in GRID_FRAMES]  # other lengths: same times
    grid = Image.new("RGB", (2 * cell, 2 * cell))
    for k, frame in enumerate(picked):
        grid.paste(as_image(frame).resize((cell, cell), Image.BILINEAR), ((k % 2) * cell, (k // 2) * cell))
    return grid


def make_row(frames, question: str, choices: list[str], answer: str, caption: str = "", as_grid: bool = False,
             **columns) -> dict:
    """A row: the clip as Qwen2-VL video input (``videos``), or as one grid image (``as_grid``)."""
    options = " ".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(choices))
    clip = frames_for_model(frames)
    media = {"images": [frame_grid(clip)]} if as_grid else {"videos": [clip]}
    kind = "image" if as_grid else "video"
    return {"prompt": [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": f"{question} {options}"}]}],
            **media, "completion": completion_for(caption, answer), "answer": answer,
            "choices": list(choices), "video_frames": clip, **columns}


class VideoQA:
    """The video_qa task: data, model, rewards, metric and default recipe."""

    name = "video_qa"
    builtin_models = ("tiny-qwen2vl", "composed:")  # built offline (README: video_qa)
    default_model = (  # `mmpost list models`
        "composed tiny LLaVA (CLIP ViT + MLP projector + Qwen2 LM, built offline) fed 2x2 frame grids; "
        "--model: tiny-qwen2vl (a tiny Qwen2-VL fed the video through qwen-vl-utils, built offline), a "
        "Qwen2-VL-family directory / hub id (video input), an image-only VLM, or composed[:TOWER[:LM_DIR]]")
    rewards = ["choice_accuracy", "format", "video_semantic"]
    ood = ("clips whose shapes are smaller than any trained (12-16 px) and whose direction-question shape moves at "
           "a never-trained speed")
    metric = "choice_accuracy"
    breakdown = "qtype"  # held-out accuracy also per question type
    solved_threshold = 1.0

    @staticmethod
    def default_config() -> TrainConfig:
        return TrainConfig(task="video_qa", stages=[
            Stage(name="sft", kind="sft", steps=2500, batch_size=16,
                  optim=Optim(lr=1e-3, schedule="cosine", warmup=0.05)),
            Stage(name="rl", kind="rl", steps=60, batch_size=8,
                  sampling=Sampling(group_size=8, max_new_tokens=40),
                  optim=Optim(lr=2e-5, schedule="constant")),
        ], data=DataConfig(train_size=TRAIN_SIZE, eval_size=200), eval=EvalConfig(batch_size=50),
            checkpoint_every=100)

    def __init__(self, cfg: TrainConfig, reward=None):
        self.cfg = cfg

    def model_path(self) -> str:
        """The model: by default the cached tiny composed LLaVA (CLIP ViT + Qwen2 LM) fed frame grids;
        ``--model tiny-qwen2vl`` the cached tiny Qwen2-VL fed the video itself; else the user's
        ``--model`` (a directory / hub id; ``composed[:TOWER[:LM_DIR]]`` for another composed model).

        The default is the composed model because, trained from scratch, the tiny Qwen2-VL (rotary
        positions only in its vision tower) had not learned to read motion even on the plainest clips
        within 600 steps, while the composed model's ViT, with learned absolute position embeddings,
        learns where things are (README, "video_qa"). Pretrained Qwen2-VL checkpoints take video.
        """
        if self.cfg.model == "tiny-qwen2vl":
            return str(cached_tiny_qwen2vl("tiny-qwen2vl-video", self._corpus, preset="tiny", vocab_size=400,
                                           image_side=SIDE, seed=0))
        if self.cfg.model and not self.cfg.model.startswith("composed"):
            return self.cfg.model
        from mmpost.models.composed_vlm import cached_composed_vlm

        return str(cached_composed_vlm("video-vlm", self._corpus, self.cfg.model or "composed",
                                       image_side=2 * GRID_CELL, vocab_size=400))

    def policy(self, device="cpu"):
        from mmpost.adapters.token_policy import TokenPolicy

        return TokenPolicy.for_run(self.model_path(), self.cfg, device)

    def _corpus(self) -> list[str]:
        records = [video(s) for s in split_seeds("train", 1000)]
        return [r["question"] + " " + " ".join(r["choices"]) + "\n" + completion_for(r["caption"], r["answer"])
                for r in records]

    @staticmethod
    def answer_only(row: dict) -> dict:
        """The demonstration without its reasoning (what happens in the clip): ``<answer>X</answer>`` alone."""
        return {**row, "completion": f"<answer>{row['answer']}</answer>"}

    def rows(self, split: str) -> list[dict]:
        """Rows of ``split``: question, the clip (``videos``, or a frame grid in ``images``), ``answer``,
        ``choices`` and ``caption``."""
        if self.cfg.data.path:
            return split_user_rows(self.cfg.data, split, lambda path: load_user_rows(
                path, self.cfg.data.skip_bad_rows, self.cfg.data.columns, as_grid=not self.takes_video))
        size = self.cfg.data.train_size if split == "train" else self.cfg.data.eval_size
        as_grid = not self.takes_video
        rows = []
        for seed in generating(split_seeds(split, size), f"{self.name} {split} rows"):
            record = video(seed, split)
            rows.append(make_row(render(record), record["question"], record["choices"], record["answer"],
                                 record["caption"], as_grid=as_grid, qtype=record["qtype"], seed=seed))
        return rows

    @functools.cached_property
    def takes_video(self) -> bool:
        """Whether the model has a video input (the Qwen2-VL family); image-only VLMs get a frame grid."""
        if self.cfg.model == "tiny-qwen2vl":
            return True
        if not self.cfg.model or self.cfg.model.startswith("composed"):
            return False
        from transformers import AutoProcessor

        return getattr(AutoProcessor.from_pretrained(self.model_path()), "video_processor", None) is not None

    def blind_completions(self, train_rows: list[dict], rows: list[dict]) -> list[str]:
        """The input-blind answer for each of ``rows``: the majority training answer of its question type
        (answers that name a shape are specific to the clip, so for those the first option)."""
        by_type: dict[str, Counter] = {}
        for r in train_rows:
            by_type.setdefault(r.get("qtype", ""), Counter())[r["answer"]] += 1
        answers = []
        for r in rows:
            counts = by_type.get(r.get("qtype", ""), Counter())
            best = next((a for a, _ in counts.most_common() if a in r["choices"]), r["choices"][0])
            answers.append(f"<answer>{best}</answer>")
        return answers


def read_video(path, fps: float = FPS, max_frames: int = FRAMES) -> list:
    """Frames of a video file (PyAV), sampled at ``fps`` up to ``max_frames``, as PIL images."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or fps)
        every = max(1, round(rate / fps))
        frames = [frame.to_image() for i, frame in enumerate(container.decode(stream)) if i % every == 0]
    if not frames:
        raise ValueError("no frames")
    return frames[:max_frames]


def load_user_rows(path: str, skip_bad_rows: bool = False, columns: list[str] | None = None,
                   as_grid: bool = False) -> list[dict]:
    """Rows from a JSONL of ``{"video", "question", "choices", "answer"}`` (paths relative to the file);
    ``as_grid``: each clip as one frame-grid image (for image-only models)."""
    def convert(r: dict) -> dict:
        if not isinstance(r["choices"], list) or r["answer"] not in r["choices"]:
            raise DataError(f"{r['source']}: 'answer' must be one of 'choices'")
        video_path = media_path(r["video"], path)
        try:
            frames = read_video(video_path)
        except Exception as error:  # PyAV raises its own error types
            raise DataError(f"{r['source']}: video {video_path} failed to decode ({error})") from None
        return make_row(frames, r["question"], r["choices"], r["answer"], r.get("caption", ""), as_grid=as_grid,
                        source=r["source"])

    return list(read_jsonl(path, required={"video": str, "question": str, "choices": list, "answer": str}, skip_bad_rows=skip_bad_rows, convert=convert,
                           columns=columns))
