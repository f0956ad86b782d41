"""video_qa: qwen-vl-utils frames, task rows, the image-grid fallback, video files."""

import json

import pytest

from mmpost.config import DataConfig, TrainConfig
from mmpost.data.jsonl import DataError
from mmpost.data.motion import FRAMES, SIDE, render, video
from mmpost.rewards.choice import choice_accuracy
from mmpost.tasks.video_qa import GRID_CELL, GRID_FRAMES, VideoQA, frame_grid, frames_for_model


def test_frames_go_through_qwen_vl_utils():
    frames = frames_for_model(render(video(0)))
    assert tuple(frames.shape) == (FRAMES, 3, SIDE, SIDE)


def test_task_rows_and_blind_baseline():
    task = VideoQA(TrainConfig(task="video_qa", model="tiny-qwen2vl", data=DataConfig(train_size=200, eval_size=40)))
    train, heldout = task.rows("train"), task.rows("heldout")
    row = train[0]
    assert row["prompt"][0]["content"][0] == {"type": "video"} and row["videos"][0] is row["video_frames"]
    assert choice_accuracy(["q"], [row["completion"]], answer=[row["answer"]], choices=[row["choices"]]) == [1.0]
    blind = task.blind_completions(train, heldout)
    scores = choice_accuracy(["q"] * len(heldout), blind, answer=[r["answer"] for r in heldout],
                             choices=[r["choices"] for r in heldout])
    assert 0.15 < sum(scores) / len(scores) < 0.7


def test_grid_rows_tile_four_frames_in_time_order():
    """Image-only models (the default composed model) get the clip as a 2 x 2 grid of frames 0, 2, 4, 6."""
    import numpy as np

    task = VideoQA(TrainConfig(task="video_qa", data=DataConfig(train_size=4, eval_size=2)))
    row = task.rows("heldout")[0]
    assert row["prompt"][0]["content"][0] == {"type": "image"} and "videos" not in row
    grid = np.asarray(row["images"][0]).astype(float)
    assert grid.shape == (2 * GRID_CELL, 2 * GRID_CELL, 3)
    frames = row["video_frames"]
    for k, t in enumerate(GRID_FRAMES):
        cell = grid[(k // 2) * GRID_CELL:(k // 2 + 1) * GRID_CELL, (k % 2) * GRID_CELL:(k % 2 + 1) * GRID_CELL]
        small = frame_grid([frames[t]] * FRAMES)  # that frame alone, resized the same way
        expected = np.asarray(small).astype(float)[:GRID_CELL, :GRID_CELL]
        assert np.abs(cell - expected).max() == 0
    # a saved image-only model directory is recognised as such; a Qwen2-VL directory takes video
    assert not VideoQA(TrainConfig(task="video_qa", model=task.model_path())).takes_video
    qwen2vl = VideoQA(TrainConfig(task="video_qa", model="tiny-qwen2vl"))
    assert qwen2vl.takes_video and VideoQA(TrainConfig(task="video_qa", model=qwen2vl.model_path())).takes_video


def test_user_jsonl_with_video_files(tmp_path):
    import av
    import numpy as np

    with av.open(str(tmp_path / "a.mp4"), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for i in range(16):
            frame = np.zeros((64, 64, 3), np.uint8)
            frame[:, i * 3:i * 3 + 8] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    rows = [{"video": "a.mp4", "question": "Which way?", "choices": ["left", "right"], "answer": "right"}] * 10
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    data = DataConfig(path=str(tmp_path / "d.jsonl"), eval_size=1)
    train = VideoQA(TrainConfig(task="video_qa", model="tiny-qwen2vl", data=data)).rows("train")
    assert len(train) == 9 and tuple(train[0]["videos"][0].shape) == (FRAMES, 3, SIDE, SIDE)
    grids = VideoQA(TrainConfig(task="video_qa", data=data)).rows("train")  # the default, image-only model
    assert "videos" not in grids[0] and grids[0]["images"][0].size == (2 * GRID_CELL, 2 * GRID_CELL)
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    (tmp_path / "b.jsonl").write_text(json.dumps({**rows[0], "video": "bad.mp4"}) + "\n")
    with pytest.raises(DataError, match="b.jsonl:1.*failed to decode"):
        VideoQA(TrainConfig(task="video_qa", data=DataConfig(path=str(tmp_path / "b.jsonl")))).rows("train")
