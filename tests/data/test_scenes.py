"""The grounding scene generator: seeded, disjoint splits, held-out colour/shape pairs, tight boxes."""

from mmpost.data.scenes import NOVEL_PAIRS, SIDE, render, scene, split_seeds


def test_scenes_are_seeded_disjoint_and_hold_out_combinations():
    assert scene(5) == scene(5)
    assert render(scene(5)).tobytes() == render(scene(5)).tobytes()
    for seed in range(300):
        record = scene(seed)
        target = record["objects"][record["target"]]
        assert (target["color"], target["shape"]) not in NOVEL_PAIRS
        x1, y1, x2, y2 = record["box"]
        assert 0 <= x1 < x2 <= SIDE and 0 <= y1 < y2 <= SIDE
        assert record["expression"].startswith("the ") and target["shape"] in record["expression"]
    heldout = [scene(s, "heldout") for s in split_seeds("heldout", 40)]
    novel = [r for r in heldout if r["novel"]]
    assert len(novel) == 20
    assert all((r["objects"][r["target"]]["color"], r["objects"][r["target"]]["shape"]) in NOVEL_PAIRS for r in novel)
    assert set(split_seeds("train", 100)).isdisjoint(split_seeds("heldout", 100))


def test_rendered_box_is_tight_around_the_target():
    record = scene(3)
    image = render(record)
    x1, y1, x2, y2 = record["box"]
    color = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 80, 220), "yellow": (235, 205, 40),
             "purple": (150, 60, 190)}[record["objects"][record["target"]]["color"]]
    inside = [image.getpixel((x, y)) for x in range(x1, x2) for y in range(y1, y2)]
    assert sum(p == color for p in inside) > 0.4 * len(inside)
    assert all(image.getpixel((x, y)) != color for x in range(x1 - 1, x2 + 1) for y in (y1 - 1, y2))
