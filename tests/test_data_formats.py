"""Users' data in JSONL, Parquet (image bytes), CSV (image paths) or a ``datasets`` directory (Image
feature), with a column mapping: every format loads the same rows; mistakes are clear errors."""

import io
import json

import numpy as np
import pytest
from PIL import Image

import mmpost
from mmpost.data.jsonl import DataError, read_rows
from mmpost.registry import TASKS

CODES = [f"import matplotlib.pyplot as plt\nplt.bar([1, 2], [{i}, 3])\n" for i in range(1, 9)]


def _png(i: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (20 * i, 100, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def datasets_on_disk(tmp_path):
    import datasets

    for i in range(len(CODES)):
        (tmp_path / f"c{i}.png").write_bytes(_png(i))
    paths = [f"c{i}.png" for i in range(len(CODES))]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"img": p, "program": c}) + "\n" for p, c in zip(paths, CODES)))
    datasets.Dataset.from_dict({"img": [_png(i) for i in range(len(CODES))], "program": CODES}).to_parquet(
        str(tmp_path / "d.parquet"))
    datasets.Dataset.from_dict({"img": paths, "program": CODES}).to_csv(str(tmp_path / "d.csv"), index=False)
    images = datasets.Dataset.from_dict({"img": [str(tmp_path / p) for p in paths], "program": CODES})
    images.cast_column("img", datasets.Image()).save_to_disk(str(tmp_path / "d_hf"))
    return tmp_path


@pytest.mark.parametrize("name", ["d.jsonl", "d.parquet", "d.csv", "d_hf"])
def test_every_format_loads_the_same_rows(name, datasets_on_disk):
    cfg = mmpost.build_config("chart2code", overrides={"data.path": str(datasets_on_disk / name),
                                                       "data.columns": "image=img,code=program"})
    task = TASKS.get("chart2code")(cfg)
    rows = task.rows("train") + task.rows("heldout")
    assert sorted(r["code"] for r in rows) == sorted(CODES)
    for r in rows:
        i = CODES.index(r["code"])
        assert np.array_equal(np.asarray(r["images"][0]), np.asarray(Image.open(io.BytesIO(_png(i))).convert("RGB")))


def test_column_mistakes_are_clear(datasets_on_disk):
    with pytest.raises(DataError, match=r"missing field 'code' \(map another column to it with --set data.columns=code=COLUMN\)"):
        list(read_rows(datasets_on_disk / "d.parquet", required={"image": str, "code": str}, columns=["image=img"]))
    with pytest.raises(DataError, match="names column 'prog', which this file does not have"):
        list(read_rows(datasets_on_disk / "d.csv", required={"code": str}, columns=["code=prog"]))
    with pytest.raises(ValueError, match="FIELD=COLUMN"):
        list(read_rows(datasets_on_disk / "d.csv", columns=["code"]))
    (datasets_on_disk / "d.txt").write_text("x")
    with pytest.raises(ValueError, match="unknown data format '.txt'"):
        list(read_rows(datasets_on_disk / "d.txt"))
