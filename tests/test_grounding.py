"""Grounding: box parsing, IoU against torchvision, Hungarian matching, format rewards, scene data."""

import json
import random

import pytest
import torch
from torchvision.ops import box_iou as tv_box_iou

from mmpost.config import DataConfig, TrainConfig
from mmpost.data.jsonl import DataError
from mmpost.data.scenes import NOVEL_PAIRS, SIDE, render, scene, split_seeds
from mmpost.rewards.grounding import box_iou, grounding_hit, grounding_iou, match_score, parse_boxes
from mmpost.rewards.text import answer_format, think_format
from mmpost.tasks.grounding import Grounding, completion_for


def random_box(rng):
    x1, y1 = rng.uniform(0, 100), rng.uniform(0, 100)
    return [x1, y1, x1 + rng.uniform(0.5, 60), y1 + rng.uniform(0.5, 60)]


def test_iou_agrees_with_torchvision_on_random_boxes():
    rng = random.Random(0)
    a = [random_box(rng) for _ in range(50)]
    b = [random_box(rng) for _ in range(50)]
    expected = tv_box_iou(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64))
    ours = torch.tensor([[box_iou(x, y) for y in b] for x in a], dtype=torch.float64)
    assert torch.allclose(ours, expected, atol=1e-12)
    assert (expected > 0).float().mean() > 0.1  # the random boxes do overlap often enough to test something


def test_iou_by_hand_and_degenerate_boxes():
    assert box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert box_iou([0, 0, 10, 10], [5, 5, 15, 15]) == pytest.approx(25 / 175)
    assert box_iou([0, 0, 10, 10], [10, 0, 20, 10]) == 0.0  # touching edges share no area
    assert box_iou([10, 10, 0, 0], [0, 0, 10, 10]) == 0.0  # an inverted box has no area
    assert box_iou([3, 3, 3, 3], [3, 3, 3, 3]) == 0.0  # two empty boxes: union 0, not a division error


@pytest.mark.parametrize("text, boxes", [
    ("<answer>[1, 2, 3, 4]</answer>", [[1, 2, 3, 4]]),
    ("[1,2,3,4]", [[1, 2, 3, 4]]),  # no tag: the whole text is the answer
    ("<think>[9, 9, 9, 9] no</think><answer>[1.5, 2, 3, 4]</answer>", [[1.5, 2, 3, 4]]),  # only inside <answer>
    ("<answer>[1, 2, 3]</answer>", []),  # three numbers are not a box
    ("<answer>[a, b, c, d]</answer>", []),
    ("<answer>[1, 2, 3, 4]</answer> then <answer>[5, 6, 7, 8]</answer>", [[5, 6, 7, 8]]),  # the last answer
    ("<answer>[1, 2, 3, 4], [5, 6, 7, 8]</answer>", [[1, 2, 3, 4], [5, 6, 7, 8]]),
    ("<answer>[-1, 2, 3, 4]</answer>", [[-1, 2, 3, 4]]),
    ("", []),
])
def test_parse_boxes_edge_cases(text, boxes):
    assert parse_boxes(text) == boxes


def test_parse_boxes_converts_declared_formats_to_pixels():
    assert parse_boxes("[100, 200, 500, 1000]", "norm1000", (200, 100)) == [[20.0, 20.0, 100.0, 100.0]]
    assert parse_boxes("[0.5, 0.5, 1, 1]", "unit", (10, 20)) == [[5.0, 10.0, 10.0, 20.0]]
    with pytest.raises(ValueError, match="image_size"):
        parse_boxes("[1, 2, 3, 4]", "unit")
    with pytest.raises(ValueError, match="box_format"):
        parse_boxes("[1, 2, 3, 4]", "xywh")


def test_hungarian_matching_by_hand():
    gold = [[0, 0, 10, 10], [20, 20, 30, 30]]
    # predictions in swapped order: the optimal assignment pairs them correctly
    assert match_score(gold, [[20, 20, 30, 30], [0, 0, 10, 10]]) == 1.0
    # a greedy matcher would give the first gold box its best prediction (IoU 0.6 with p2) and leave
    # the second gold box with nothing; the optimal assignment pairs g1-p1 (0.5) and g2-p2 (0.6)
    g1, g2 = [0, 0, 10, 10], [6, 0, 16, 10]
    p1, p2 = [0, 0, 5, 10], [2.5, 0, 12.5, 10]
    assert box_iou(g1, p2) > box_iou(g1, p1)
    expected = (box_iou(g1, p1) + box_iou(g2, p2)) / 2
    assert match_score([g1, g2], [p1, p2]) == pytest.approx(expected)
    assert match_score(gold, [[0, 0, 10, 10]]) == 0.5  # a missed box costs
    assert match_score([[0, 0, 10, 10]], [[0, 0, 10, 10], [50, 50, 60, 60]]) == 0.5  # so does an extra one
    assert match_score([], []) == 1.0 and match_score(gold, []) == 0.0 and match_score([], gold) == 0.0
    # thresholded: a match below 0.5 IoU does not count
    assert match_score([[0, 0, 10, 10]], [[0, 0, 4, 10]], threshold=0.5, hit=True) == 0.0
    assert match_score([[0, 0, 10, 10]], [[0, 0, 6, 10]], threshold=0.5, hit=True) == 1.0


def test_grounding_rewards_trl_signature():
    prompts = ["p"] * 4
    completions = ["<answer>[0, 0, 10, 10]</answer>", "<answer>[0, 0, 5, 10]</answer>", "no box", [
        {"role": "assistant", "content": "<answer>[0, 0, 10, 10]</answer>"}]]
    box = [[0, 0, 10, 10]] * 4
    assert grounding_iou(prompts, completions, box=box) == [1.0, 0.5, 0.0, 1.0]
    assert grounding_hit(prompts, completions, box=box) == [1.0, 1.0, 0.0, 1.0]
    # only the first box counts for a single referent (a model cannot hedge by listing many)
    assert grounding_iou(["p"], ["[50, 50, 60, 60], [0, 0, 10, 10]"], box=[[0, 0, 10, 10]]) == [0.0]
    assert grounding_iou(["p"], ["[0, 0, 500, 1000]"], box=[[0, 0, 10, 20]], box_format=["norm1000"],
                         image_size=[[20, 20]]) == [1.0]


def test_format_rewards():
    assert think_format(["p"] * 5, ["<think>x</think><answer>y</answer>", "<think>x</think>\n <answer>y</answer>",
                                    "<answer>y</answer>", "<think>x</think><answer>y</answer> extra",
                                    "<think>x<answer>y</answer>"]) == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert answer_format(["p"] * 4, ["<answer>A</answer>", " <answer>A</answer>\n", "<answer>A",
                                     "<think>t</think><answer>A</answer>"]) == [1.0, 1.0, 0.0, 0.0]


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


def test_task_rows_reward_and_blind_baseline():
    task = Grounding(TrainConfig(task="grounding", data=DataConfig(train_size=40, eval_size=10)))
    train, heldout = task.rows("train"), task.rows("heldout")
    row = train[0]
    assert row["images"][0].size == (SIDE, SIDE) and row["image_size"] == [SIDE, SIDE]
    assert grounding_iou([row["prompt"]], [row["completion"]], box=[row["box"]]) == [1.0]
    blind = task.blind_completions(train, heldout)
    assert len(blind) == len(heldout) and len(set(blind)) == 1
    scores = grounding_iou([r["prompt"] for r in heldout], blind, box=[r["box"] for r in heldout])
    assert 0 <= sum(scores) / len(scores) < 0.5


def test_user_jsonl_and_coco_files(tmp_path):
    from PIL import Image

    Image.new("RGB", (40, 30), "white").save(tmp_path / "a.png")
    rows = [{"image": "a.png", "expression": "the cup", "box": [1, 2, 11, 12]},
            {"image": "a.png", "expression": "the cups", "bbox": [[1, 2, 10, 10], [20, 5, 5, 5]]}] * 5
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    task = Grounding(TrainConfig(task="grounding", data=DataConfig(path=str(tmp_path / "d.jsonl"))))
    train, heldout = task.rows("train"), task.rows("heldout")
    assert len(train) == 9 and len(heldout) == 1
    assert train[0]["box"] == [1, 2, 11, 12] and train[1]["box"] == [[1, 2, 11, 12], [20, 5, 25, 10]]
    assert train[1]["completion"] == completion_for([[1, 2, 11, 12], [20, 5, 25, 10]])
    assert grounding_iou(["p"], [train[1]["completion"]], box=[train[1]["box"]]) == [1.0]

    (tmp_path / "bad.jsonl").write_text(json.dumps({"image": "a.png", "expression": "x", "box": [5, 5, 1, 1]}))
    with pytest.raises(DataError, match="bad.jsonl:1.*no area"):
        Grounding(TrainConfig(task="grounding", data=DataConfig(path=str(tmp_path / "bad.jsonl")))).rows("train")

    coco = {"images": [{"id": 7, "file_name": "a.png"}], "categories": [{"id": 1, "name": "cup"}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [1, 2, 10, 10]},
                            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [20, 5, 5, 5]}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    rows = Grounding(TrainConfig(task="grounding", data=DataConfig(path=str(tmp_path / "coco.json")))).rows("heldout")
    assert rows[0]["expression"] == "every cup" and rows[0]["box"] == [[1, 2, 11, 12], [20, 5, 25, 10]]
