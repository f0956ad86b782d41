"""The video_qa clip generator: seeded clips whose answers match the tracks."""

from mmpost.data.motion import FRAMES, split_seeds, video


def test_clips_are_seeded_and_answers_match_the_tracks():
    assert video(3) == video(3)
    for seed in range(200):
        record = video(seed)
        assert record["answer"] in record["choices"]
        target = record["tracks"][0]
        visible = [p for p in target["track"] if p is not None]
        if record["qtype"] == "direction":
            dx, dy = visible[-1][0] - visible[0][0], visible[-1][1] - visible[0][1]
            moved = {"left": -dx, "right": dx, "up": -dy, "down": dy}[record["answer"]]
            off_axis = dy if record["answer"] in ("left", "right") else dx
            assert moved > 30 and off_axis == 0
        if record["qtype"] == "count":
            appearances = sum(1 for t in range(FRAMES) if target["track"][t] is not None
                              and (t == 0 or target["track"][t - 1] is None))
            assert appearances == int(record["answer"])
        if record["qtype"] == "speed":
            distance = abs(visible[-1][0] - visible[0][0])
            assert (distance > 40) == (record["answer"] == "fast")
    heldout = [video(s, "heldout") for s in split_seeds("heldout", 10)]
    assert all(r != video(s) for r, s in zip(heldout, range(10)))
