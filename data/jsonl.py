"""Loader for users' JSONL files: one JSON object a line, image paths relative to the file."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A malformed data row; the message names the file and line."""


def read_jsonl(path: str | Path, required: tuple[str, ...] = (), skip_bad_rows: bool = False) -> Iterator[dict]:
    """Yield validated rows of a JSONL file.

    Each row gets ``source`` (``"file:line"``) and, when it has an ``image`` field, ``image_obj``
    (the decoded RGB image). A row that is not valid UTF-8 or JSON, lacks a required field, has an
    empty or NUL-containing ``code``, or whose image fails to decode raises :class:`DataError`
    naming file and line, or is skipped and counted when ``skip_bad_rows`` is set.
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
                missing = [k for k in required if k not in row]
                if missing:
                    raise DataError(f"{where}: missing field {missing[0]!r}")
                if "code" in row and (not isinstance(row["code"], str) or not row["code"].strip() or "\x00" in row["code"]):
                    raise DataError(f"{where}: 'code' must be a non-empty string without NUL bytes")
                if "image" in row:
                    image_path = path.parent / row["image"]
                    try:
                        with Image.open(image_path) as image:
                            row["image_obj"] = image.convert("RGB")
                    except (OSError, ValueError) as error:
                        raise DataError(f"{where}: image {image_path} failed to decode ({error})") from None
                row["source"] = where
                yield row
            except DataError:
                if not skip_bad_rows:
                    raise
                skipped += 1
                log.warning("skipping bad row %s", where)
    if skipped:
        log.warning("%s: skipped %d malformed rows (data.skip_bad_rows=true)", path, skipped)
