"""The semantic-consistency video reward: reasoning parsed, captions ranked, scoring rules."""

import json

import pytest

from mmpost.data.motion import render, split_seeds, video
from mmpost.rewards.video_semantic import VideoSemantic, reasoning_after_first_sentence
from mmpost.tasks.video_qa import frames_for_model


@pytest.mark.parametrize("completion, text", [
    ("<think>I watch the clip. The red circle moves up.</think><answer>up</answer>", "The red circle moves up."),
    ("<think>One sentence only</think><answer>up</answer>", ""),
    ("<think>First. Second. Third.</think>", "Second. Third."),
    ("<answer>up</answer>", ""),
])
def test_reasoning_after_first_sentence(completion, text):
    assert reasoning_after_first_sentence(completion) == text


@pytest.fixture(scope="module")
def semantic(mmpost_home):
    reward = VideoSemantic()
    reward._model()  # trains (or loads) the tiny CLIP into the test cache
    return reward


def test_semantic_reward_ranks_matching_captions_above_mismatching(semantic):
    """On held-out clips, the clip's own caption scores above a caption naming another colour and
    shape (measured: 31 of 40, mean margin 0.22 in cosine similarity)."""
    margins = []
    for seed in split_seeds("heldout", 40):
        record = video(seed, "heldout")
        frames = frames_for_model(render(record))
        other = next(video(s)["caption"] for s in range(seed % 997, 10**6)
                     if video(s)["tracks"][0]["color"] != record["tracks"][0]["color"]
                     and video(s)["tracks"][0]["shape"] != record["tracks"][0]["shape"])
        margins.append(semantic.similarity(frames, record["caption"]) - semantic.similarity(frames, other))
    assert sum(m > 0 for m in margins) >= 28 and sum(margins) / len(margins) > 0.1


def test_semantic_reward_rules(semantic):
    record = video(5)
    frames = frames_for_model(render(record))
    good = f"<think>I watch the clip. {record['caption']}</think><answer>{record['answer']}</answer>"
    wrong_answer = next(c for c in record["choices"] if c != record["answer"])
    bad = f"<think>I watch the clip. {record['caption']}</think><answer>{wrong_answer}</answer>"
    no_reason = f"<answer>{record['answer']}</answer>"
    scores = semantic(["q"] * 3, [good, bad, no_reason], video_frames=[frames] * 3, answer=[record["answer"]] * 3,
                      choices=[record["choices"]] * 3)
    assert scores[1] == 0.0 and scores[2] == 0.0  # a wrong answer or no reasoning earns nothing
    expected = min(1.0, 2 * max(0.0, semantic.similarity(frames, record["caption"])))
    assert scores[0] == pytest.approx(expected) and scores[0] > 0


def test_the_tiny_clip_trains_when_first_used_inside_no_grad(tmp_path):
    """Evaluation and rewards run under no_grad, and the CLIP is built on first use there: training
    must still get gradients (it once failed with "element 0 of tensors does not require grad")."""
    import torch

    from mmpost.data.motion import SIDE
    from mmpost.models.tiny_clip import load_clip, train_tiny_clip

    record = video(1)
    pairs = [(frame, record["caption"]) for frame in render(record)[:4]]
    with torch.no_grad():
        path = train_tiny_clip(tmp_path / "clip", pairs, image_size=SIDE, steps=2, batch_size=4)
    model, _, _ = load_clip(str(path))
    assert json.loads((path / "mmpost_build.json").read_text())["steps"] == 2 and model is not None
