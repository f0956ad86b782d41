"""Verifiable-answer rewards for ``#### ANSWER`` completions (GSM8K style; ReFT, TULU 3 RLVR)."""

from __future__ import annotations

import re

from mmpost.registry import reward
from mmpost.rewards.text import completion_text

ANSWER = re.compile(r"####\s*(-?\d+)")
LINE_RESULT = re.compile(r"=\s*(-?\d+)\s*$")  # the result of a worked line "a+b=c"


def extract_answer(text: str) -> str | None:
    """The number after the last ``####``, or ``None`` when there is none."""
    found = ANSWER.findall(completion_text(text))
    return found[-1] if found else None


@reward("answer_match")
def answer_match(prompts, completions, answer, **columns) -> list[float]:
    """1 when the extracted answer equals the row's ``answer``, else 0 (TULU 3's verifier, alpha = 1).

    >>> answer_match(["q", "q", "q"], ["1+2=3\\n#### 3", "#### 4", "three"], answer=["3", "3", "3"])
    [1.0, 0.0, 0.0]
    """
    return [1.0 if extract_answer(c) == str(a) else 0.0 for c, a in zip(completions, answer)]


@reward("answer_partial")
def answer_partial(prompts, completions, answer, **columns) -> list[float]:
    """ReFT's reward: 1 for the right answer, 0.1 when an answer is given but wrong, 0 when none is.

    >>> answer_partial(["q", "q", "q"], ["#### 3", "#### 4", "three"], answer=["3", "3", "3"])
    [1.0, 0.1, 0.0]
    """
    scores = []
    for completion, gold in zip(completions, answer):
        found = extract_answer(completion)
        scores.append(0.0 if found is None else 1.0 if found == str(gold) else 0.1)
    return scores


@reward("answer_given")
def answer_given(prompts, completions, **columns) -> list[float]:
    """1 when the completion states an answer (``#### N``), right or wrong (Fast-Math-R1's format
    reward: an answer given before the reasoning ends, so inference can stop there).

    >>> answer_given(["q", "q"], ["3 + 4 = 7\\n#### 7", "3 + 4 is seven"])
    [1.0, 0.0]
    """
    return [0.0 if extract_answer(c) is None else 1.0 for c in completions]


def line_results(text: str) -> list[str]:
    """The result of every worked line (``a+b=c`` gives ``c``), in order.

    >>> line_results("7-4=3\\n3+21=24\\n#### 24")
    ['3', '24']
    """
    return [m.group(1) for line in text.splitlines() if (m := LINE_RESULT.search(line.strip()))]


@reward("step_match")
def step_match(prompts, completions, steps=None, **columns) -> list[float | None]:
    """A step-level reward: the share of the reference's intermediate results (the ``steps`` column, one
    per worked line) that the completion's lines reach at the same position, minus 0.25 for every line
    beyond the reference's count (so padding with extra lines does not pay). ``None`` (not applicable)
    for rows without ``steps``. Used with ``answer_match`` to credit a chain that slipped in one line.

    >>> step_match(["q"] * 3, ["7-4=3\\n3+21=24\\n#### 24", "7-4=3\\n3+21=25\\n#### 25", "7-4=3\\n3+21=24\\n1+1=2"],
    ...            steps=[["3", "24"]] * 3)
    [1.0, 0.5, 0.75]
    """
    if steps is None:
        return [None] * len(completions)
    scores = []
    for completion, gold in zip(completions, steps):
        if not gold:
            scores.append(None)
            continue
        got = line_results(completion_text(completion))
        hits = sum(1 for i, value in enumerate(gold) if i < len(got) and got[i] == str(value))
        scores.append(hits / len(gold) - 0.25 * max(0, len(got) - len(gold)))
    return scores
