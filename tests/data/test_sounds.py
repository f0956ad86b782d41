"""The audio_qa clip generator: seeded clips whose answers match the sound."""

import numpy as np

from mmpost.data.sounds import SAMPLE_RATE, SECONDS, clip, split_seeds, synthesize


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
