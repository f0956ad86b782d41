"""audio_qa: task rows, blind baseline and user JSONL."""

import json

import numpy as np
import pytest

from mmpost.config import DataConfig, TrainConfig
from mmpost.data.jsonl import DataError
from mmpost.rewards.choice import choice_accuracy
from mmpost.tasks.audio_qa import AudioQA


def test_task_rows_and_blind_baseline():
    task = AudioQA(TrainConfig(task="audio_qa", data=DataConfig(train_size=300, eval_size=60)))
    train, heldout = task.rows("train"), task.rows("heldout")
    row = train[0]
    assert row["audios"][0].shape == (32000,) and row["prompt"][0]["content"][0] == {"type": "audio"}
    assert choice_accuracy(["q"], [row["completion"]], answer=[row["answer"]], choices=[row["choices"]]) == [1.0]
    blind = task.blind_completions(train, heldout)
    scores = choice_accuracy(["q"] * len(heldout), blind, answer=[r["answer"] for r in heldout],
                             choices=[r["choices"] for r in heldout])
    assert 0.2 < sum(scores) / len(scores) < 0.75  # a majority guess, well below a listening model


def test_user_jsonl_with_wav_files(tmp_path):
    import soundfile

    tone = np.sin(2 * np.pi * 440 * np.arange(8000) / 8000).astype(np.float32)
    soundfile.write(tmp_path / "a.wav", tone, 8000)  # 8 kHz: resampled to 16 kHz on load
    rows = [{"audio": "a.wav", "question": "High or low?", "choices": ["high", "low"], "answer": "high"}] * 10
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    task = AudioQA(TrainConfig(task="audio_qa", data=DataConfig(path=str(tmp_path / "d.jsonl"), eval_size=1)))
    train = task.rows("train")
    assert len(train) == 9 and train[0]["audios"][0].shape == (16000,)
    (tmp_path / "bad.jsonl").write_text(json.dumps({**rows[0], "answer": "medium"}) + "\n")
    with pytest.raises(DataError, match="bad.jsonl:1.*one of 'choices'"):
        AudioQA(TrainConfig(task="audio_qa", data=DataConfig(path=str(tmp_path / "bad.jsonl")))).rows("train")
    (tmp_path / "broken.wav").write_bytes(b"not audio")
    (tmp_path / "b2.jsonl").write_text(json.dumps({**rows[0], "audio": "broken.wav"}) + "\n")
    with pytest.raises(DataError, match="b2.jsonl:1.*failed to decode"):
        AudioQA(TrainConfig(task="audio_qa", data=DataConfig(path=str(tmp_path / "b2.jsonl")))).rows("train")
