"""Loader for users' datasets: JSONL, Parquet, CSV, a Hugging Face ``datasets`` directory, or a folder of
code + image pairs (ChartMimic / Plot2Code layout).

Rows stream from the file (nothing is read whole), are renamed by an optional column mapping,
validated one by one, and carry ``source`` (``"file:row"``) for error messages. Media columns
may hold a path relative to the data file (:func:`media_path`), raw bytes, ``{"bytes": ..., "path": ...}`` (the
``datasets`` Image feature) or an already decoded image.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterator

log = logging.getLogger(__name__)

FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


class DataError(ValueError):
    """A malformed data row; the message names the file and row."""


def _as_tuple(kind) -> tuple:
    return kind if isinstance(kind, tuple) else (kind,)


def parse_columns(mapping: list[str] | dict | None) -> dict[str, str]:
    """``["image=img_path", "code=program"]`` (from ``--set data.columns=image=img_path,code=program``)
    as ``{"image": "img_path", "code": "program"}``: the field mmpost needs -> the column that holds it."""
    if not mapping:
        return {}
    if isinstance(mapping, dict):
        return dict(mapping)
    pairs = [item.split("=", 1) for item in mapping]
    bad = [item for item, pair in zip(mapping, pairs) if len(pair) != 2 or not all(pair)]
    if bad:
        raise ValueError(f"data.columns entries are FIELD=COLUMN, got {bad}")
    return dict(pairs)


def _jsonl_records(path: Path) -> Iterator[tuple[int, Any]]:
    """``(line number, object)`` per non-blank line; undecodable lines come as DataError objects."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                yield number, json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as error:
                yield number, DataError(f"{path}:{number}: not UTF-8 ({error})")
            except json.JSONDecodeError as error:
                text = raw.decode("utf-8").rstrip("\n")
                near = text[max(0, error.pos - 30):error.pos + 30]
                yield number, DataError(f"{path}:{number}: invalid JSON: {error.msg} at column {error.colno} "
                                        f"(near {near!r}; each line must be one complete JSON object)")


def _dataset_records(path: Path) -> Iterator[tuple[int, Any]]:
    """Rows of a Parquet/CSV file (streamed) or a ``datasets.save_to_disk`` directory. Media features
    (``Image``, ``Audio``, ...) are not decoded by ``datasets``: it would open a relative path from the
    working directory; :func:`media_path` resolves it from the data instead."""
    import datasets

    if path.is_dir():
        dataset = datasets.load_from_disk(str(path))
        if isinstance(dataset, datasets.DatasetDict):
            dataset = dataset["train"] if "train" in dataset else next(iter(dataset.values()))
    else:
        dataset = datasets.load_dataset(FORMATS[path.suffix], data_files=str(path), split="train", streaming=True)
    for name, feature in (dataset.features or {}).items():
        if getattr(feature, "decode", False):  # Image, Audio, Video: paths and bytes, decoded here
            dataset = dataset.cast_column(name, type(feature)(decode=False))
    for number, row in enumerate(dataset, start=1):
        yield number, row


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def is_pair_folder(path: Path) -> bool:
    """A folder of ``NAME.py`` + ``NAME.png`` pairs, as chart-to-code benchmarks ship (ChartMimic's
    ``ori_500/``, Plot2Code), rather than a ``datasets.save_to_disk`` directory."""
    return (path.is_dir() and not any((path / f).exists() for f in ("dataset_info.json", "dataset_dict.json", "state.json"))
            and any(path.glob("*.py")))


def _pair_folder_records(path: Path) -> Iterator[tuple[int, Any]]:
    """``{"image": "NAME.png", "code": <NAME.py>, "name": NAME}`` per code file, in name order; a code file
    without an image beside it, or not UTF-8, is a malformed row."""
    for number, code_file in enumerate(sorted(path.glob("*.py")), start=1):
        image = next((code_file.with_suffix(s) for s in IMAGE_SUFFIXES if code_file.with_suffix(s).exists()), None)
        if image is None:
            yield number, DataError(f"{code_file}: no image beside it ({code_file.stem} with one of "
                                    f"{', '.join(IMAGE_SUFFIXES)})")
            continue
        try:
            yield number, {"image": image.name, "code": code_file.read_text(encoding="utf-8"), "name": code_file.stem}
        except UnicodeDecodeError as error:
            yield number, DataError(f"{code_file}: not UTF-8 ({error})")


def media_path(value: str, data: str | Path) -> Path:
    """A media file a data row names: absolute, or relative to the data file's folder (for a ``datasets``
    directory: the directory, then the folder holding it). The first that exists, else the first."""
    data = Path(data)
    if Path(value).is_absolute():
        return Path(value)
    candidates = [data / value, data.parent / value] if data.is_dir() else [data.parent / value]
    return next((c for c in candidates if c.exists()), candidates[0])


def _image(value, data: Path):
    """A media value as an RGB PIL image (path, bytes, {"bytes", "path"} or an image)."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray)):
        with Image.open(io.BytesIO(value)) as image:
            return image.convert("RGB")
    if not isinstance(value, str):
        raise ValueError(f"expected a path or image bytes, got {type(value).__name__}")
    with Image.open(media_path(value, data)) as image:
        return image.convert("RGB")


def _validate(row, where: str, required) -> dict:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object")
    missing = [k for k in required if k not in row or row[k] is None]
    if missing:
        raise DataError(f"{where}: missing field {missing[0]!r} (map another column to it with "
                        f"--set data.columns={missing[0]}=COLUMN)")
    for key, kind in (required.items() if isinstance(required, dict) else ()):
        value = row[key]
        if key == "image" and not isinstance(value, str):
            continue  # bytes or a decoded image: checked when decoded
        if not isinstance(value, kind) or isinstance(value, bool) and bool not in _as_tuple(kind):
            expected = " or ".join(t.__name__ for t in _as_tuple(kind))
            raise DataError(f"{where}: {key!r} must be {expected}, got {type(value).__name__}")
    for key in [*required, "code"]:
        value = row.get(key)
        if (isinstance(value, str) or key == "code" and key in row) and (
                not isinstance(value, str) or not value.strip() or "\x00" in value):
            raise DataError(f"{where}: {key!r} must be a non-empty string without NUL bytes")
    return row


def read_rows(path: str | Path, required: dict[str, type | tuple] | tuple[str, ...] = (), skip_bad_rows: bool = False,
              convert: Callable[[dict], Any] | None = None, columns: list[str] | dict | None = None) -> Iterator:
    """Yield validated rows of a dataset (or ``convert(row)`` of each), streaming.

    ``path``: a ``.jsonl`` / ``.parquet`` / ``.csv`` file, a ``datasets.save_to_disk`` directory, or a folder
    of ``NAME.py`` + ``NAME.png`` pairs (chart-to-code benchmarks' layout; rows ``image``, ``code``, ``name``).
    ``columns`` maps the fields mmpost needs to the file's column names (``["image=img"]``).
    ``required`` names the fields every row must have, or maps each to its JSON type(s) (``str``,
    ``list``, ``(str, int, float)``). Each row gets ``source`` (``"file:row"``) and, when it has an
    ``image``, ``image_obj`` (decoded RGB). A row that is not valid UTF-8 or JSON, lacks a required
    field or has one of the wrong type, has a text field that is empty or holds NUL bytes, whose
    image fails to decode, or that ``convert`` rejects (by raising :class:`DataError`) raises
    :class:`DataError` naming file and row, or is skipped and counted when ``skip_bad_rows`` is set
    (``data.skip_bad_rows=true``).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    if path.is_file() and path.suffix not in FORMATS:
        raise ValueError(f"{path}: unknown data format {path.suffix!r}; use .jsonl, .parquet, .csv or a "
                         "datasets.save_to_disk directory")
    renames = parse_columns(columns)
    if is_pair_folder(path):
        records = _pair_folder_records(path)
    elif path.suffix in (".jsonl", ".json"):
        records = _jsonl_records(path)
    else:
        records = _dataset_records(path)
    skipped = 0
    for number, row in records:
        where = f"{path}:{number}"
        try:
            if isinstance(row, DataError):
                raise row
            if renames and isinstance(row, dict):
                missing = [column for column in renames.values() if column not in row]
                if missing:
                    raise DataError(f"{where}: data.columns names column {missing[0]!r}, which this file does not "
                                    f"have (columns: {', '.join(map(str, row))})")
                row = {**row, **{field: row[column] for field, column in renames.items()}}
            row = _validate(row, where, required)
            if "image" in row:
                try:
                    row["image_obj"] = _image(row["image"], path)
                except (OSError, ValueError) as error:
                    raise DataError(f"{where}: image {str(row['image'])[:200]} failed to decode ({error})") from None
            row["source"] = where
            yield convert(row) if convert else row
        except DataError as error:
            if not skip_bad_rows:
                raise
            skipped += 1
            if where not in SKIPPED:  # a file read again (train and held-out splits) reports each row once
                SKIPPED[where] = str(error)
                log.warning("skipping bad row: %s", error)
    if skipped:
        log.info("%s: skipped %d malformed rows (data.skip_bad_rows=true)", path, skipped)


SKIPPED: dict[str, str] = {}  # "file:row" -> why, for every row skip_bad_rows skipped in this process


def skipped_rows() -> dict[str, int]:
    """How many malformed rows ``data.skip_bad_rows`` skipped, per file (for results.json and the card)."""
    counts: dict[str, int] = {}
    for where in SKIPPED:
        file = where.rpartition(":")[0]
        counts[file] = counts.get(file, 0) + 1
    return counts


read_jsonl = read_rows  # the original name: JSONL is one of the formats
