"""Small text rewards usable with any token policy."""

from __future__ import annotations

import re

from mmpost.registry import reward


ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
THINK_ANSWER = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)
ANSWER_ONLY = re.compile(r"<answer>.*?</answer>", re.DOTALL)


def completion_text(completion) -> str:
    """A completion's text: the string itself, or the last message's content of a conversational one."""
    return completion if isinstance(completion, str) else completion[-1]["content"]


def answer_text(completion) -> str:
    """The inside of the last ``<answer>...</answer>``, or the whole completion without one."""
    text = completion_text(completion)
    found = ANSWER.findall(text)
    return found[-1] if found else text


@reward("length")
def length(prompts, completions, target: int = 200, **columns) -> list[float]:
    """Reward for length in characters: ``min(len, target) / target`` (more text, up to a cap).

    >>> length(["p"], ["abcd"], target=8)
    [0.5]
    """
    return [min(len(completion_text(c)), target) / target for c in completions]


@reward("code_block")
def code_block(prompts, completions, **columns) -> list[float]:
    """1 when the completion contains a fenced code block, else 0.

    >>> code_block(["p", "p"], ["```python\\nx = 1\\n```", "x = 1"])
    [1.0, 0.0]
    """
    return [1.0 if re.search(r"```[a-z]*\n.*?```", completion_text(c), re.DOTALL) else 0.0 for c in completions]


@reward("format")
def think_format(prompts, completions, **columns) -> list[float]:
    """1 when the completion is exactly ``<think>...</think> <answer>...</answer>`` (VLM-R1, Visual-RFT).

    >>> think_format(["p", "p"], ["<think>a</think>\\n<answer>b</answer>", "<answer>b</answer>"])
    [1.0, 0.0]
    """
    return [1.0 if THINK_ANSWER.fullmatch(completion_text(c).strip()) else 0.0 for c in completions]


@reward("answer_format")
def answer_format(prompts, completions, **columns) -> list[float]:
    """1 when the completion is exactly ``<answer>...</answer>`` (R1-AQA's format reward).

    >>> answer_format(["p", "p"], ["<answer>B</answer>", "so <answer>B</answer>"])
    [1.0, 0.0]
    """
    return [1.0 if ANSWER_ONLY.fullmatch(completion_text(c).strip()) else 0.0 for c in completions]
