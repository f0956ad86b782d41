"""grounding: task rows, the input-blind baseline, and user JSONL and COCO files."""

import json

import pytest

from mmpost.config import DataConfig, TrainConfig
from mmpost.data.jsonl import DataError
from mmpost.data.scenes import SIDE
from mmpost.rewards.grounding import grounding_iou
from mmpost.tasks.grounding import Grounding, completion_for


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
    task = Grounding(TrainConfig(task="grounding", data=DataConfig(path=str(tmp_path / "d.jsonl"), eval_size=1)))
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
