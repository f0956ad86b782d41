"""VideoRFT's semantic-consistency reward: does the reasoning describe what the frames show?

For each completion (VideoRFT ``semantic_reward``, w_scale = 2): take the ``<think>`` text, drop its
first sentence (text up to the first '.'), embed it and every frame of the row's clip with a CLIP
model, and score ``min(1, 2 * max(0, mean over frames of cos(frame, text)))``. VideoRFT's trainer
zeroes it when the answer is wrong; here the reward does that itself from the row's ``answer`` /
``choices``, so the rule holds wherever the reward is used.

The CLIP model: ``clip_model`` (a trained tiny-CLIP directory or ``ARCH:CHECKPOINT`` of local
open_clip weights; the trainer sets it from ``--clip-model``), by default the tiny open_clip model
trained on the video_qa task's frames and captions (:mod:`mmpost.models.tiny_clip`). Frame
embeddings are cached per clip, so a GRPO group pays for its clip's frames once.
"""

from __future__ import annotations

import re

from mmpost.registry import reward
from mmpost.rewards.choice import choice_accuracy
from mmpost.rewards.text import completion_text

THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)
W_SCALE = 2.0


def reasoning_after_first_sentence(completion) -> str:
    """The ``<think>`` text without its first sentence (VideoRFT), ``""`` when there is none.

    >>> reasoning_after_first_sentence("<think>I watch it. The ball moves left.</think><answer>left</answer>")
    'The ball moves left.'
    """
    text = completion_text(completion)
    found = THINK.search(text)
    if not found:
        return ""
    thought = found.group(1).strip()
    return thought.split(".", 1)[1].strip() if "." in thought else ""


class VideoSemantic:
    """The ``video_semantic`` reward (TRL signature); the CLIP model loads on first use."""

    def __init__(self):
        self.clip_model = ""  # "" = the default tiny CLIP trained on video_qa's data
        self._loaded = None
        self._frame_cache: dict = {}

    def configure(self, cfg) -> None:
        """The run's CLIP model (``clip_model``: ``ARCH:CHECKPOINT`` of local weights; "" = the tiny default)."""
        self.clip_model = cfg.clip_model

    def _model(self):
        if self._loaded is None or self._loaded[0] != self.clip_model:
            from mmpost.models.tiny_clip import load_clip

            spec = self.clip_model or str(default_clip_path())
            self._loaded = (self.clip_model, *load_clip(spec))
            self._frame_cache.clear()
        return self._loaded[1:]

    def frame_embeddings(self, frames):
        """Normalised embeddings of a clip's frames ([T, 3, H, W] in 0..255, or PIL images)."""
        import torch

        from mmpost.data.motion import as_image

        key = id(frames)
        if key not in self._frame_cache:
            model, preprocess, _ = self._model()
            images = [as_image(f) for f in frames]
            with torch.no_grad():
                embedded = model.encode_image(torch.stack([preprocess(i) for i in images]), normalize=True)
            if len(self._frame_cache) > 4096:
                self._frame_cache.clear()
            self._frame_cache[key] = (frames, embedded)  # keep the frames alive so the id stays theirs
        return self._frame_cache[key][1]

    def similarity(self, frames, text: str) -> float:
        """Mean cosine similarity of ``text`` with each frame."""
        import torch

        model, _, tokenizer = self._model()
        with torch.no_grad():
            text_embedding = model.encode_text(tokenizer([text]), normalize=True)[0]
        return float((self.frame_embeddings(frames) @ text_embedding).mean())

    def __call__(self, prompts, completions, video_frames, answer=None, choices=None, **columns) -> list[float]:
        correct = (choice_accuracy(prompts, completions, answer, choices) if answer is not None
                   else [1.0] * len(completions))
        scores = []
        for completion, frames, right in zip(completions, video_frames, correct):
            text = reasoning_after_first_sentence(completion)
            if right <= 0 or not text:
                scores.append(0.0)
                continue
            scores.append(min(1.0, W_SCALE * max(0.0, self.similarity(frames, text))))
        return scores


def default_clip_path():
    """The tiny open_clip model trained on video_qa's training frames and captions (cached)."""
    from mmpost.data.motion import SIDE, render, split_seeds, video
    from mmpost.models.tiny_clip import cached_tiny_clip

    def pairs():
        out = []
        for seed in split_seeds("train", 1500):
            record = video(seed)
            frames = render(record)
            out += [(frames[t], record["caption"]) for t in (1, 4, 7)]
        return out

    return cached_tiny_clip("tiny-clip-video", pairs, image_size=SIDE)


video_semantic = reward("video_semantic")(VideoSemantic())
