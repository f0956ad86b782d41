"""Small text rewards usable with any token policy."""

from __future__ import annotations

import re

from mmpost.registry import reward


def _text(completion) -> str:
    return completion if isinstance(completion, str) else completion[-1]["content"]


@reward("length")
def length(prompts, completions, target: int = 200, **columns) -> list[float]:
    """Reward for length in characters: ``min(len, target) / target`` (more text, up to a cap).

    >>> length(["p"], ["abcd"], target=8)
    [0.5]
    """
    return [min(len(_text(c)), target) / target for c in completions]


@reward("code_block")
def code_block(prompts, completions, **columns) -> list[float]:
    """1 when the completion contains a fenced code block, else 0.

    >>> code_block(["p", "p"], ["```python\\nx = 1\\n```", "x = 1"])
    [1.0, 0.0]
    """
    return [1.0 if re.search(r"```[a-z]*\n.*?```", _text(c), re.DOTALL) else 0.0 for c in completions]
