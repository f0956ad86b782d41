"""Users' data in JSONL, Parquet (image bytes), CSV (image paths) or a ``datasets`` directory (Image
feature), with a column mapping: every format loads the same rows; mistakes are clear errors.

Fuzz: a valid row of each user-data format is mutated (a field dropped, null, empty, holding NUL
bytes or the wrong type; the line cut short, not UTF-8, not an object; a media file missing or
corrupt). Strict loading must raise ``DataError`` naming the file and line; with
``skip_bad_rows`` the file's valid rows come back and the bad one is skipped.
"""

import io
import json
import random

import numpy as np
import pytest
from PIL import Image

import mmpost
from mmpost.data.jsonl import DataError, read_jsonl, read_rows
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


def _media(tmp_path):
    from PIL import Image
    import soundfile

    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "ok.png")
    soundfile.write(tmp_path / "ok.wav", np.zeros(1600, np.float32), 16000)
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF....WAVEfmt garbage")


def _loaders():
    """name -> (valid row, load(path, skip) -> rows, media field or None)."""
    from mmpost.tasks import audio_qa, grounding

    def jsonl(required):
        return lambda path, skip: list(read_jsonl(path, required=required, skip_bad_rows=skip))

    return {
        "chart2code": ({"image": "ok.png", "code": "import matplotlib.pyplot as plt\nplt.plot([1])\n"},
                       jsonl({"image": str, "code": str}), "image"),
        "arithmetic": ({"question": "What is 2 + 3?", "solution": "2 + 3 = 5", "answer": "5"},
                       jsonl({"question": str, "solution": str, "answer": (str, int, float)}), None),
        "grounding": ({"image": "ok.png", "expression": "the red square", "box": [1, 2, 20, 30]},
                      grounding.load_user_rows, "image"),
        "audio_qa": ({"audio": "ok.wav", "question": "How many beeps?", "choices": ["1", "2"], "answer": "2"},
                     audio_qa.load_user_rows, "audio"),
    }


NUMBERS_ALLOWED = {("arithmetic", "answer")}  # a numeric answer is a valid arithmetic row


def _mutations(fmt: str, row: dict, media: str | None, rng: random.Random):
    """(description, line bytes) for malformed variants of ``row``."""
    out = []
    for key in row:
        for what, value in (("null", None), ("empty", ""), ("NUL", "a\x00b"), ("number", 7), ("object", {"x": 1})):
            if what == "number" and (fmt, key) in NUMBERS_ALLOWED:
                continue
            out.append((f"{key} {what}", json.dumps({**row, key: value}).encode()))
        out.append((f"{key} missing", json.dumps({k: v for k, v in row.items() if k != key}).encode()))
    good = json.dumps(row).encode()
    out += [("cut short", good[: rng.randrange(2, len(good) - 1)]), ("not UTF-8", b'{"a": "\xff\xfe"}'),
            ("not an object", b"[1, 2, 3]"), ("bare string", b'"hello"')]
    if media:
        out += [(f"{media} missing file", json.dumps({**row, media: "nope.bin"}).encode()),
                (f"{media} corrupt", json.dumps({**row, media: "corrupt." + row[media].rsplit(".", 1)[1]}).encode())]
    return out


@pytest.mark.parametrize("fmt", ["chart2code", "arithmetic", "grounding", "audio_qa"])
def test_malformed_rows_raise_clearly_or_are_skipped(fmt, tmp_path):
    _media(tmp_path)
    row, load, media = _loaders()[fmt]
    good = json.dumps(row).encode()
    rng = random.Random(fmt)
    mutations = _mutations(fmt, row, media, rng)
    unexpected = []
    for i, (what, line) in enumerate(mutations):
        path = tmp_path / f"{fmt}-{i}.jsonl"
        path.write_bytes(good + b"\n" + line + b"\n" + good + b"\n")
        try:
            load(path, False)
            unexpected.append(f"{what}: loaded without error")
        except DataError as error:
            if f"{path}:2" not in str(error):
                unexpected.append(f"{what}: error does not name {path}:2: {error}")
        rows = load(path, True)
        if len(rows) != 2:
            unexpected.append(f"{what}: skip_bad_rows returned {len(rows)} rows, expected the 2 valid ones")
    assert not unexpected, "\n".join(unexpected)


def test_jsonl_errors_name_file_and_line(tmp_path):
    from PIL import Image

    Image.new("RGB", (20, 20), "white").save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    path = tmp_path / "data.jsonl"
    rows = [{"image": "ok.png", "code": "x = 1"}, {"image": "ok.png"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DataError, match=r"data.jsonl:2: missing field 'code'"):
        list(read_jsonl(path, required=("image", "code")))
    path.write_text(json.dumps({"image": "broken.png", "code": "x"}) + "\n{oops\n")
    with pytest.raises(DataError, match=r"data.jsonl:1: image .* failed to decode"):
        list(read_jsonl(path, required=("image", "code")))
    path.write_bytes(b'{"image": "ok.png", "code": "a\\u0000b"}\n\xff\xfe\n{"image": "ok.png", "code": "x = 1"}\n')
    good = list(read_jsonl(path, required=("image", "code"), skip_bad_rows=True))
    assert [r["source"].rsplit(":", 1)[1] for r in good] == ["3"]


def _chart_rows(path, split, **data):
    overrides = {"data.path": str(path), "data.columns": "image=img,code=program",
                 **{f"data.{k}": v for k, v in data.items()}}
    return TASKS.get("chart2code")(mmpost.build_config("chart2code", overrides=overrides)).rows(split)


def test_a_users_file_is_split_by_the_configured_sizes(datasets_on_disk, tmp_path, caplog):
    """data.eval_size held-out rows from the end of the file, data.train_size training rows from the start;
    a held-out size over half the file is capped with a warning naming both settings; data.eval_path
    gives a separate held-out file."""
    path = datasets_on_disk / "d.jsonl"
    assert [r["code"] for r in _chart_rows(path, "heldout", eval_size=3)] == CODES[-3:]
    assert [r["code"] for r in _chart_rows(path, "train", eval_size=3, train_size=2)] == CODES[:2]
    with caplog.at_level("WARNING"):
        assert [r["code"] for r in _chart_rows(path, "heldout", eval_size=100)] == CODES[-4:]
    assert "data.eval_size=100 is capped at half the file" in caplog.text and "data.eval_path" in caplog.text
    held = tmp_path / "held.jsonl"
    held.write_text(json.dumps({"img": str(datasets_on_disk / "c0.png"), "program": "plt.plot([1])"}) + "\n")
    assert [r["code"] for r in _chart_rows(path, "heldout", eval_path=str(held))] == ["plt.plot([1])"]
    assert [r["code"] for r in _chart_rows(path, "train", eval_path=str(held))] == CODES
    with pytest.raises(ValueError, match="no 'ood' split"):
        _chart_rows(path, "ood")


def test_relative_media_paths_resolve_from_the_data_not_the_working_directory(tmp_path, monkeypatch):
    """A Parquet file with datasets' Image feature holding relative paths (datasets itself would open
    them from the working directory), and a datasets directory of relative paths written beside it."""
    import datasets

    data = tmp_path / "data"
    data.mkdir()
    (data / "c0.png").write_bytes(_png(0))
    table = datasets.Dataset.from_dict({"img": ["c0.png"] * 2, "program": CODES[:2]})
    monkeypatch.chdir(data)
    table.cast_column("img", datasets.Image()).to_parquet("images.parquet")
    table.save_to_disk("plain_dir")
    monkeypatch.chdir(tmp_path)  # the user runs from elsewhere
    for name in ("images.parquet", "plain_dir"):
        rows = list(read_rows(data / name, required={"image": str, "code": str}, columns=["image=img", "code=program"]))
        assert np.array_equal(np.asarray(rows[0]["image_obj"]), np.asarray(Image.open(io.BytesIO(_png(0))).convert("RGB")))


def test_a_chart_benchmark_folder_of_code_and_image_pairs(tmp_path):
    """ChartMimic / Plot2Code layout: NAME.py beside NAME.png; chart2code trains on it as data.path."""
    folder = tmp_path / "ori_500"
    folder.mkdir()
    for i, code in enumerate(CODES[:6]):
        (folder / f"bar_{i}.py").write_text(code)
        (folder / f"bar_{i}.png").write_bytes(_png(i))
    (folder / "orphan.py").write_text(CODES[6])  # no image beside it
    with pytest.raises(DataError, match="orphan.py: no image beside it"):
        list(read_rows(folder, required={"image": str, "code": str}))
    rows = list(read_rows(folder, required={"image": str, "code": str}, skip_bad_rows=True))
    assert [r["name"] for r in rows] == [f"bar_{i}" for i in range(6)] and rows[2]["code"] == CODES[2]
    (folder / "orphan.py").unlink()
    cfg = mmpost.build_config("chart2code", overrides={"data.path": str(folder), "data.eval_size": 2})
    task = TASKS.get("chart2code")(cfg)
    train, heldout = task.rows("train"), task.rows("heldout")
    assert [r["code"] for r in train + heldout] == CODES[:6]
    assert np.array_equal(np.asarray(heldout[-1]["images"][0]), np.asarray(Image.open(io.BytesIO(_png(5))).convert("RGB")))
