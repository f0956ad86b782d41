"""Loader for users' JSONL files: one JSON object a line, image paths relative to the file."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterator

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A malformed data row; the message names the file and line."""


def _as_tuple(kind) -> tuple:
    return kind if isinstance(kind, tuple) else (kind,)


def read_jsonl(path: str | Path, required: dict[str, type | tuple] | tuple[str, ...] = (), skip_bad_rows: bool = False,
               convert: Callable[[dict], Any] | None = None) -> Iterator:
    """Yield validated rows of a JSONL file (or ``convert(row)`` of each).

    Each row gets ``source`` (``"file:line"``) and, when it has an ``image`` field, ``image_obj``
    (the decoded RGB image). ``required`` names the fields every row must have, or maps each to
    its JSON type(s) (``str``, ``list``, ``(str, int, float)``). A row that is not valid UTF-8 or
    JSON, lacks a required field or has one of the wrong type, has a text field that is empty or
    holds NUL bytes, whose image fails to decode, or that
    ``convert`` rejects (by raising :class:`DataError`) raises :class:`DataError` naming file and
    line, or is skipped and counted when ``skip_bad_rows`` is set (``data.skip_bad_rows=true``).
    """
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    skipped = 0
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            where = f"{path}:{number}"
            try:
                if not raw.strip():
                    continue
                try:
                    row = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError as error:
                    raise DataError(f"{where}: not UTF-8 ({error})") from None
                except json.JSONDecodeError as error:
                    raise DataError(f"{where}: invalid JSON ({error.msg})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{where}: expected a JSON object")
                missing = [k for k in required if k not in row or row[k] is None]
                if missing:
                    raise DataError(f"{where}: missing field {missing[0]!r}")
                for key, kind in (required.items() if isinstance(required, dict) else ()):
                    if not isinstance(row[key], kind) or isinstance(row[key], bool) and bool not in _as_tuple(kind):
                        expected = " or ".join(t.__name__ for t in _as_tuple(kind))
                        raise DataError(f"{where}: {key!r} must be {expected}, got {type(row[key]).__name__}")
                for key in [*required, "code"]:
                    value = row.get(key)
                    if (isinstance(value, str) or key == "code" and key in row) and (
                            not isinstance(value, str) or not value.strip() or "\x00" in value):
                        raise DataError(f"{where}: {key!r} must be a non-empty string without NUL bytes")
                if "image" in row:
                    image_path = path.parent / row["image"]
                    try:
                        with Image.open(image_path) as image:
                            row["image_obj"] = image.convert("RGB")
                    except (OSError, ValueError) as error:
                        raise DataError(f"{where}: image {image_path} failed to decode ({error})") from None
                row["source"] = where
                yield convert(row) if convert else row
            except DataError:
                if not skip_bad_rows:
                    raise
                skipped += 1
                log.warning("skipping bad row %s", where)
    if skipped:
        log.warning("%s: skipped %d malformed rows (data.skip_bad_rows=true)", path, skipped)
