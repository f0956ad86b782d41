"""Grounding rewards: box parsing, IoU against torchvision, Hungarian matching, the TRL-signature rewards."""

import random

import pytest
import torch
from torchvision.ops import box_iou as tv_box_iou

from mmpost.rewards.grounding import box_iou, grounding_hit, grounding_iou, match_score, parse_boxes


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
