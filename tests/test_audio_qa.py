"""audio_qa: clip generator, choice-accuracy parser, task rows, blind baseline and user JSONL."""

import json

import numpy as np
import pytest

from mmpost.config import DataConfig, TrainConfig
from mmpost.data.jsonl import DataError
from mmpost.data.sounds import SAMPLE_RATE, SECONDS, clip, split_seeds, synthesize
from mmpost.rewards.choice import choice_accuracy, chosen_option
from mmpost.tasks.audio_qa import AudioQA

CHOICES = ["the first", "the second"]


@pytest.mark.parametrize("completion, picked", [
    ("<answer>the second</answer>", "the second"),
    ("<answer> The Second. </answer>", "the second"),  # case, spaces and a final period do not matter
    ("<answer>B</answer>", "the second"),
    ("<answer>(B)</answer>", "the second"),
    ("<answer>(B) the second</answer>", "the second"),
    ("<answer>(B) the first</answer>", None),  # the letter and the text disagree
    ("<answer>(C)</answer>", None),  # no option C
    ("<answer>the first</answer><answer>the second</answer>", "the second"),  # the last answer counts
    ("the second", "the second"),  # no tags: the whole completion
    ("", ""),
])
def test_chosen_option_edge_cases(completion, picked):
    assert chosen_option(completion, CHOICES) == picked


def test_lowercase_options_are_not_letters():
    # the vowel options a / i / u must not be read as letter A / I / U
    assert chosen_option("<answer>a</answer>", ["i", "u", "a"]) == "a"
    assert chosen_option("<answer>A</answer>", ["i", "u", "a"]) == "i"
    assert chosen_option("<answer>a chord</answer>", ["a single tone", "a chord"]) == "a chord"


def test_choice_accuracy_trl_signature():
    completions = ["<answer>the second</answer>", "<answer>A</answer>", "<answer>maybe</answer>",
                   [{"role": "assistant", "content": "<answer>B</answer>"}]]
    assert choice_accuracy(["q"] * 4, completions, answer=["the second"] * 4, choices=[CHOICES] * 4) == [
        1.0, 0.0, 0.0, 1.0]
    assert choice_accuracy(["q"], ["<answer>3</answer>"], answer=["3"]) == [1.0]  # no choices column: text only


def test_clips_are_seeded_and_answers_match_the_sound():
    assert clip(7) == clip(7)
    assert np.array_equal(synthesize(clip(7)), synthesize(clip(7)))
    seen = set()
    for seed in range(200):
        record = clip(seed)
        seen.add(record["qtype"])
        wave = synthesize(record)
        assert wave.shape == (int(SAMPLE_RATE * SECONDS),) and wave.dtype == np.float32 and np.abs(wave).max() <= 1
        assert record["answer"] in record["choices"]
        if record["qtype"] == "count":
            assert len(record["events"]) == int(record["answer"])
        if record["qtype"] == "pitch":
            first, second = record["events"][0][1], record["events"][1][1]
            assert (first > second) == (record["answer"] == "the first")
    assert seen == {"pitch", "count", "order", "chord", "vowel"}
    heldout = [clip(s, "heldout") for s in split_seeds("heldout", 20)]
    assert sum(r["shifted"] for r in heldout) == 10


def test_louder_beeps_are_where_the_events_say():
    record = next(clip(s) for s in range(100) if clip(s)["qtype"] == "count" and clip(s)["answer"] == "3")
    wave = synthesize(record)
    frame = SAMPLE_RATE // 100
    energy = np.array([np.abs(wave[i:i + frame]).mean() for i in range(0, len(wave) - frame, frame)])
    loud = energy > 5 * np.median(energy)
    onsets = int(np.sum(loud[1:] & ~loud[:-1]) + loud[0])
    assert onsets == 3


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
    task = AudioQA(TrainConfig(task="audio_qa", data=DataConfig(path=str(tmp_path / "d.jsonl"))))
    train = task.rows("train")
    assert len(train) == 9 and train[0]["audios"][0].shape == (16000,)
    (tmp_path / "bad.jsonl").write_text(json.dumps({**rows[0], "answer": "medium"}) + "\n")
    with pytest.raises(DataError, match="bad.jsonl:1.*one of 'choices'"):
        AudioQA(TrainConfig(task="audio_qa", data=DataConfig(path=str(tmp_path / "bad.jsonl")))).rows("train")
    (tmp_path / "broken.wav").write_bytes(b"not audio")
    (tmp_path / "b2.jsonl").write_text(json.dumps({**rows[0], "audio": "broken.wav"}) + "\n")
    with pytest.raises(DataError, match="b2.jsonl:1.*failed to decode"):
        AudioQA(TrainConfig(task="audio_qa", data=DataConfig(path=str(tmp_path / "b2.jsonl")))).rows("train")
