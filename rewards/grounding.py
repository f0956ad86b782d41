"""Visual-grounding rewards: IoU of the predicted box(es) with the gold box(es), and answer format.

Boxes are ``[x1, y1, x2, y2]`` in original-image pixels, continuous-area IoU (no ``+1``). A
completion's boxes are the ``[a, b, c, d]`` number lists inside its last ``<answer>...</answer>``
(the whole text when it has no answer tag). The row says how the model writes coordinates
(``box_format``): ``"pixels"`` (absolute, as the image was given), ``"norm1000"`` (Qwen2-VL's
0-1000 grid) or ``"unit"`` (0-1); predicted boxes are mapped to pixels with the row's
``image_size`` ``[width, height]`` before scoring.

Several gold boxes are matched to predictions by the Hungarian assignment on IoU (VLM-R1 and
Visual-RFT match greedily; the optimal assignment is never worse): score = sum of matched IoUs
that reach ``threshold`` / max(#gold, #predicted), so extra or missing boxes cost. Both lists
empty scores 1; nothing parseable scores 0. ``grounding_iou`` is this with threshold 0 (the
continuous IoU for one box, as VLM-R1's ``iou_reward``), ``grounding_hit`` counts matches with
IoU >= 0.5 as 1 (accuracy at 0.5). The answer-template rewards ``format`` and
``answer_format`` are in :mod:`mmpost.rewards.text`.
"""

from __future__ import annotations

import re

from mmpost.registry import reward
from mmpost.rewards.text import answer_text

NUMBER = r"-?\d+(?:\.\d+)?"
BOX = re.compile(rf"\[\s*({NUMBER})\s*,\s*({NUMBER})\s*,\s*({NUMBER})\s*,\s*({NUMBER})\s*\]")
SCALES = {"pixels": None, "norm1000": 1000.0, "unit": 1.0}


def parse_boxes(completion, box_format: str = "pixels", image_size=None) -> list[list[float]]:
    """Every ``[x1, y1, x2, y2]`` in the completion's answer, in pixels.

    >>> parse_boxes("<answer>[10, 20, 30, 40]</answer>")
    [[10.0, 20.0, 30.0, 40.0]]
    >>> parse_boxes("[0.1, 0.2, 0.5, 0.5]", "unit", (200, 100))
    [[20.0, 20.0, 100.0, 50.0]]
    """
    if box_format not in SCALES:
        raise ValueError(f"unknown box_format {box_format!r}; expected one of {sorted(SCALES)}")
    boxes = [[float(v) for v in match] for match in BOX.findall(answer_text(completion))]
    scale = SCALES[box_format]
    if scale is not None:
        if image_size is None:
            raise ValueError(f"box_format {box_format!r} needs the row's image_size [width, height]")
        width, height = image_size
        boxes = [[x1 * width / scale, y1 * height / scale, x2 * width / scale, y2 * height / scale]
                 for x1, y1, x2, y2 in boxes]
    return boxes


def box_iou(a, b) -> float:
    """IoU of two ``[x1, y1, x2, y2]`` boxes by continuous area; an inverted box has area 0.

    >>> box_iou([0, 0, 10, 10], [5, 0, 15, 10])
    0.3333333333333333
    """
    area = lambda x1, y1, x2, y2: max(0.0, x2 - x1) * max(0.0, y2 - y1)  # noqa: E731
    inter = area(max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))
    union = area(*a) + area(*b) - inter
    return inter / union if union > 0 else 0.0


def match_score(gold: list, predicted: list, threshold: float = 0.0, hit: bool = False) -> float:
    """Hungarian-matched IoU score of predicted boxes against gold boxes (see the module doc).

    >>> match_score([[0, 0, 10, 10]], [[0, 0, 10, 10], [50, 50, 60, 60]])
    0.5
    """
    if not gold and not predicted:
        return 1.0
    if not gold or not predicted:
        return 0.0
    from scipy.optimize import linear_sum_assignment

    ious = [[box_iou(g, p) for p in predicted] for g in gold]
    rows, cols = linear_sum_assignment(ious, maximize=True)
    matched = [ious[r][c] for r, c in zip(rows, cols) if ious[r][c] >= threshold and ious[r][c] > 0]
    return (len(matched) if hit else sum(matched)) / max(len(gold), len(predicted))


def _gold_boxes(box) -> list:
    """One box ``[x1, y1, x2, y2]`` or a list of boxes, as a list of boxes."""
    return [box] if box and not isinstance(box[0], (list, tuple)) else list(box or [])


def _scores(completions, box, box_format, image_size, threshold, hit) -> list[float]:
    n = len(completions)
    formats = box_format if isinstance(box_format, list) else [box_format or "pixels"] * n
    sizes = image_size if image_size is not None else [None] * n
    scores = []
    for completion, gold, fmt, size in zip(completions, box, formats, sizes):
        predicted = parse_boxes(completion, fmt, size)
        gold = _gold_boxes(gold)
        if len(gold) == 1:  # a single referent: the first box the model wrote is its answer
            predicted = predicted[:1]
        scores.append(match_score(gold, predicted, threshold, hit))
    return scores


@reward("grounding_iou")
def grounding_iou(prompts, completions, box, box_format=None, image_size=None, **columns) -> list[float]:
    """Continuous IoU of the answer's box with the row's gold ``box`` (Hungarian-matched for
    several boxes). ``box_format`` / ``image_size`` columns say how coordinates are written."""
    return _scores(completions, box, box_format, image_size, threshold=0.0, hit=False)


@reward("grounding_hit")
def grounding_hit(prompts, completions, box, box_format=None, image_size=None, **columns) -> list[float]:
    """1 per gold box matched with IoU >= 0.5, over max(#gold, #predicted): accuracy at IoU 0.5."""
    return _scores(completions, box, box_format, image_size, threshold=0.5, hit=True)
