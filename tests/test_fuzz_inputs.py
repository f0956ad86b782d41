"""Fuzz: generated malformed data rows and reward outputs each end in a clear error or a counted skip.

Rows: a valid row of each user-data format is mutated (a field dropped, null, empty, holding NUL
bytes or the wrong type; the line cut short, not UTF-8, not an object; a media file missing or
corrupt). Strict loading must raise ``DataError`` naming the file and line; with
``skip_bad_rows`` the file's valid rows come back and the bad one is skipped.

Rewards: functions that raise, return the wrong count or type, or return NaN, inf, strings,
dicts, tensors... In "contain" mode scoring never raises and the metrics count exactly the
invalid values; in "raise" mode a ``RewardError`` names the reward.
"""

import json
import logging
import math
import random

import numpy as np
import pytest
import torch

from mmpost.data.jsonl import DataError, read_jsonl
from mmpost.rewarding import RewardError, score_rollout, set_error_mode
from mmpost.types import Rollout


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


def _rollout(n: int) -> Rollout:
    return Rollout(logprobs=torch.zeros(n, 1), mask=torch.ones(n, 1), group=torch.zeros(n, dtype=torch.long),
                   outputs=["x"] * n, prompts=["p"] * n, columns={}, actions=None)


JUNK = [math.nan, math.inf, -math.inf, "0.5", b"1", {"r": 1}, [1.0], object(), 1 + 2j, np.array([1.0, 2.0]),
        torch.tensor([1.0, 2.0])]
GOOD = [0.0, 1, 0.25, True, np.float32(0.5), np.int64(2), torch.tensor(0.75), None]


def _is_invalid(value) -> bool:
    if value is None:
        return False
    try:
        return not math.isfinite(float(value)) or isinstance(value, (str, bytes))
    except (TypeError, ValueError):
        return True


@pytest.fixture
def error_mode():
    yield set_error_mode
    set_error_mode("contain")


def test_fuzzed_reward_outputs_are_counted_or_raise(error_mode, caplog):
    rng = random.Random(0)
    for trial in range(200):
        n = rng.randint(1, 6)
        shape = rng.choice(["values", "values", "values", "raise", "short", "long", "scalar", "string", "dict"])
        values = [rng.choice(JUNK + GOOD) for _ in range(n)]

        def reward(prompts, completions, **_):
            if shape == "raise":
                raise KeyError("boom")
            return {"short": values[:-1], "long": values + [1.0], "scalar": 1.0, "string": "1" * n,
                    "dict": {i: 1.0 for i in range(n)}}.get(shape, values)

        error_mode("contain")
        with caplog.at_level(logging.WARNING):
            metrics = score_rollout(_rollout(n), {"fuzzed": reward}, {"fuzzed": 1.0})
        if shape == "values":
            expected = sum(_is_invalid(v) for v in values)
            assert metrics.get("reward/fuzzed/invalid", 0.0) == expected, (trial, values, metrics)
        else:
            assert metrics["reward/fuzzed/errors"] == n, (trial, shape, metrics)
        error_mode("raise")
        broken = shape != "values" or any(_is_invalid(v) for v in values)
        if broken:
            with pytest.raises(RewardError, match="fuzzed"):
                score_rollout(_rollout(n), {"fuzzed": reward}, {"fuzzed": 1.0})
        else:
            score_rollout(_rollout(n), {"fuzzed": reward}, {"fuzzed": 1.0})


def test_valid_values_are_scored_exactly(error_mode):
    rollout = _rollout(4)
    score_rollout(rollout, {"a": lambda prompts, completions, **_: [1.0, math.nan, None, np.float32(0.5)]}, {"a": 2.0})
    assert rollout.rewards[0] == 2.0 and rollout.rewards[3] == 1.0
    assert math.isnan(rollout.rewards[1]) and math.isnan(rollout.rewards[2])  # invalid / not applicable: no reward


def test_nonfinite_loss_is_skipped_then_aborts():
    """A NaN loss skips the update (weights unchanged); max_nonfinite_steps in a row stop the run."""
    from mmpost.config import Stage
    from mmpost.stages.context import StageContext

    class Accelerator:
        def backward(self, loss):
            loss.backward()

        def clip_grad_norm_(self, params, max_norm):
            return torch.nn.utils.clip_grad_norm_(params, max_norm)

    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0)
    ctx = StageContext(Stage(name="sft", kind="sft"), None, None, [], {}, {}, Accelerator(), optimizer, scheduler,
                       [weight], max_nonfinite_steps=3)
    ctx.update((weight * torch.tensor([1.0, math.nan, 1.0])).sum())  # NaN loss
    ctx.update((weight * torch.tensor([1.0, math.inf, 1.0])).sum() * 0 + weight.sum() * math.inf)  # inf
    assert torch.equal(weight.detach(), torch.ones(3)) and ctx.state["nonfinite_in_a_row"] == 2
    ctx.update(weight.sum())  # a good step resets the streak and updates
    assert ctx.state["nonfinite_in_a_row"] == 0 and not torch.equal(weight.detach(), torch.ones(3))
    ctx.update(weight.sum() * math.nan)
    ctx.update(weight.sum() * math.nan)
    with pytest.raises(FloatingPointError, match="3 updates in a row"):
        ctx.update(weight.sum() * math.nan)
    assert ctx.state["nonfinite_total"] == 5
