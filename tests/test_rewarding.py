"""Combining reward functions on a rollout: weights, None, NaN, and a reward that raises.

Fuzz: functions that raise, return the wrong count or type, or return NaN, inf, strings, dicts,
tensors... In "contain" mode scoring never raises and the metrics count exactly the invalid values;
in "raise" mode a ``RewardError`` names the reward.
"""

import logging
import math
import random

import numpy as np
import pytest
import torch

import mmpost
from mmpost.rewarding import RewardError, score_rollout, set_error_mode
from mmpost.types import Rollout


def make_rollout(outputs):
    n = len(outputs)
    return Rollout(logprobs=torch.zeros(n, 2), mask=torch.ones(n, 2), group=torch.zeros(n, dtype=torch.long),
                   outputs=outputs, prompts=["p"] * n, columns={"answer": ["x"] * n}, actions=None)


def test_weighted_sum_with_none_and_nan():
    rollout = make_rollout(["a", "bb", "ccc"])
    rewards = {"one": lambda prompts, completions, **kw: [1.0, None, None],
               "two": lambda prompts, completions, **kw: [2.0, float("nan"), None]}
    metrics = score_rollout(rollout, rewards, {"one": 1.0, "two": 0.5})
    # row 0: 1*1 + 0.5*2 = 2; row 1: only NaN/None -> unscorable; row 2: all None -> unscorable
    assert rollout.rewards[0].item() == 2.0
    assert math.isnan(rollout.rewards[1].item()) and math.isnan(rollout.rewards[2].item())
    assert metrics["reward/one/mean"] == 1.0 and metrics["reward/two/mean"] == 2.0
    assert rollout.reward_components["two"] == [2.0, None, None]


def test_raising_reward_is_contained():
    rollout = make_rollout(["a", "b"])

    def broken(prompts, completions, **kw):
        raise RuntimeError("boom")

    metrics = score_rollout(rollout, {"ok": lambda prompts, completions, **kw: [0.5, 1.0], "broken": broken}, {})
    assert rollout.rewards.tolist() == [0.5, 1.0]
    assert metrics["reward/broken/errors"] == 2.0


def test_a_failing_reward_says_where(tmp_path, caplog):
    """The warning (contained) and the error (raise) name the reward's own file and line, not the library's."""
    from mmpost.registry import load_reward_file

    (tmp_path / "my_reward.py").write_text("def helper(c):\n    return 1 / 0\n\n\ndef divides(completions, **kw):\n"
                                           "    return [helper(c) for c in completions]\n")
    name = load_reward_file(f"{tmp_path / 'my_reward.py'}:divides")
    fn = mmpost.REWARDS.get(name)
    with caplog.at_level("WARNING"):
        score_rollout(make_rollout(["a"]), {name: fn}, {})
    assert f"at {tmp_path / 'my_reward.py'}:2 in helper: ZeroDivisionError" in caplog.text
    set_error_mode("raise")
    try:
        with pytest.raises(RewardError, match=r"my_reward.py:2 in helper: ZeroDivisionError.*MMPOST_DEBUG=1"):
            score_rollout(make_rollout(["a"]), {name: fn}, {})
    finally:
        set_error_mode("contain")


def test_wrong_length_is_contained():
    rollout = make_rollout(["a", "b"])
    metrics = score_rollout(rollout, {"short": lambda prompts, completions, **kw: [1.0]}, {})
    assert metrics["reward/short/errors"] == 2.0 and torch.isnan(rollout.rewards).all()


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
