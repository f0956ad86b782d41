"""Multiple-choice accuracy for question answering over audio, video or images (R1-AQA, VideoRFT).

The answer is the inside of the completion's last ``<answer>...</answer>`` (the whole text without
one), compared with the gold option text after stripping, lower-casing and dropping a final
period, as R1-AQA's exact-match fallback does. A row with ``choices`` also accepts the option's
letter: ``B``, ``(B)`` or ``(B) text`` (the text must then agree with option B).
"""

from __future__ import annotations

import re

from mmpost.registry import reward
from mmpost.rewards.text import answer_text

LETTER = re.compile(r"\(?([A-Z])\)?(?:[.:]\s*|\s+|$)(.*)", re.DOTALL)


def _norm(text: str) -> str:
    return text.strip().rstrip(".").strip().lower()


def chosen_option(completion, choices=None) -> str | None:
    """The option a completion picks, normalised; ``None`` for a letter that names no option or a
    lettered answer whose text contradicts the letter.

    >>> chosen_option("<answer>(B) the second</answer>", ["the first", "the second"])
    'the second'
    >>> chosen_option("<answer>A</answer>", ["x", "y"]), chosen_option("a chord.", ["a chord"])
    ('x', 'a chord')
    """
    text = answer_text(completion).strip()
    match = LETTER.fullmatch(text) if choices else None
    if match and (text[:1] == "(" or len(text) == 1 or match.group(2)):
        index = ord(match.group(1)) - 65
        if index >= len(choices):
            return None
        picked, rest = _norm(choices[index]), _norm(match.group(2))
        return picked if not rest or rest == picked else None
    return _norm(text)


@reward("choice_accuracy")
def choice_accuracy(prompts, completions, answer, choices=None, **columns) -> list[float]:
    """1 when the completion picks the gold ``answer`` option, else 0 (R1-AQA's accuracy reward).

    >>> choice_accuracy(["q"] * 3, ["<answer>the first</answer>", "<answer>(B)</answer>", "no idea"],
    ...                 answer=["the first"] * 3, choices=[["the first", "the second"]] * 3)
    [1.0, 0.0, 0.0]
    """
    choices = choices or [None] * len(completions)
    return [1.0 if chosen_option(c, options) == _norm(str(gold)) else 0.0
            for c, gold, options in zip(completions, answer, choices)]
