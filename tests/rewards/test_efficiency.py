"""Fast-Math-R1's length-aware rewards against their formulas (``finetune/grpo_rewards.py`` of
``analokmaus/kaggle-aimo2-fast-math-r1``) on hand-computed inputs."""

import doctest
import math
from types import SimpleNamespace

import pytest

from mmpost.rewards import answer, efficiency
from mmpost.rewards.efficiency import CosineLength, kimi_length


def test_cosine_length_by_hand():
    fn = CosineLength(max_len=40)
    right, wrong, long_right = "a" * 14 + "#### 3", "a" * 14 + "#### 4", "a" * 100 + "#### 3"
    got = fn(["q"] * 3, [right, wrong, long_right], answer=["3"] * 3)
    cos = math.cos(math.pi * 20 / 40)  # 20 characters of 40: halfway, cos = 0
    assert got[0] == pytest.approx(0.1 + 0.5 * (1.0 - 0.1) * (1 + cos))  # 0.55
    assert got[1] == pytest.approx(-0.1 + 0.5 * (-1.0 + 0.1) * (1 + cos))  # -0.55
    assert got[2] == pytest.approx(0.1)  # clipped at max_len: the floor of a right answer


def test_cosine_length_keeps_the_papers_ratio_to_the_generation_cap():
    fn = CosineLength()
    stage = SimpleNamespace(sampling=SimpleNamespace(max_new_tokens=16384))
    fn.configure(SimpleNamespace(stages=[stage]))
    assert fn.max_len == 30000


def test_kimi_length_by_hand_per_prompt():
    prompts = ["p1", "p1", "p1", "p2", "p2"]
    completions = ["#### 3", "abcd #### 3", "abcdefghi #### 9", "#### 1", "#### 2"]
    got = kimi_length(prompts, completions, answer=["3", "3", "3", "1", "1"])
    # p1: lengths 6, 11, 16 -> lambda 0.5, 0, -0.5; the last is wrong: min(0, -0.5); p2: equal lengths -> 0
    assert got == pytest.approx([0.5, 0.0, -0.5, 0.0, 0.0])
    # a wrong answer never earns a positive length bonus
    assert kimi_length(["p", "p"], ["#### 9", "abcdef #### 3"], answer=["3", "3"]) == pytest.approx([0.0, -0.5])


def test_doctests():
    for module in (efficiency, answer):
        assert doctest.testmod(module).failed == 0
