"""Length-aware correctness rewards that teach short right answers (Fast-Math-R1, arXiv 2507.08267).

Fast-Math-R1's GRPO stage sums three rewards, each weight 1 (``analokmaus/kaggle-aimo2-fast-math-r1``,
``finetune/grpo_rewards.py``): a format reward (here :func:`~mmpost.rewards.answer.answer_given`), the
cosine length-scaled correctness reward (:class:`CosineLength`, open-r1's ``get_cosine_scaled_reward``
after Yeo et al., arXiv 2502.03373) and Kimi k1.5's length penalty (:func:`kimi_length`, arXiv
2501.12599 section 2.3.3). As in that code, lengths are characters of the decoded completion.

Correctness is the verifiable answer of the row (``answer`` column, ``#### N``), as ``answer_match``.
"""

from __future__ import annotations

import math

from mmpost.registry import reward
from mmpost.rewards.answer import extract_answer
from mmpost.rewards.text import completion_text


def _correct(completions, answer) -> list[bool]:
    return [extract_answer(c) == str(a) for c, a in zip(completions, answer)]


class CosineLength:
    """``lo + (hi - lo)(1 + cos(pi min(1, L / max_len))) / 2``: a right answer earns 1.0 when short
    down to 0.1 at ``max_len`` characters, a wrong one -1.0 when short up to -0.1 (Fast-Math-R1's
    stage-2 constants). ``max_len`` keeps the paper's ratio to the completion cap (30000 characters
    for 16384 tokens) when the run's config is known (:meth:`configure`).

    >>> [round(x, 2) for x in CosineLength(max_len=100)(["q", "q"], ["#### 3", "#### 4"], answer=["3", "3"])]
    [0.99, -0.99]
    """

    CHARS_PER_CAP_TOKEN = 30000 / 16384

    def __init__(self, max_len: int = 30000, correct=(0.1, 1.0), wrong=(-0.1, -1.0)):
        self.max_len, self.correct, self.wrong = max_len, correct, wrong

    def configure(self, cfg) -> None:
        """``max_len`` from the last stage's generation cap, in the paper's proportion."""
        self.max_len = max(1, round(self.CHARS_PER_CAP_TOKEN * cfg.stages[-1].sampling.max_new_tokens))

    def __call__(self, prompts, completions, answer, **columns) -> list[float]:
        scores = []
        for completion, right in zip(completions, _correct(completions, answer)):
            lo, hi = self.correct if right else self.wrong  # hi is the value of an empty answer
            progress = min(1.0, len(completion_text(completion)) / self.max_len)
            scores.append(lo + 0.5 * (hi - lo) * (1.0 + math.cos(math.pi * progress)))
        return scores


cosine_length = reward("cosine_length")(CosineLength())


@reward("kimi_length")
def kimi_length(prompts, completions, answer, **columns) -> list[float]:
    """Kimi k1.5's length penalty: ``lambda = 0.5 - (L - L_min) / (L_max - L_min)`` over the samples of
    the same prompt (Kimi's definition; Fast-Math-R1's code takes the extremes over each device batch);
    a right answer earns ``lambda``, a wrong one ``min(0, lambda)``; 0 when all lengths are equal.

    >>> kimi_length(["q"] * 3, ["#### 3", "xxxx #### 3", "xxxxxxxxx #### 4"], answer=["3"] * 3)
    [0.5, 0.0, -0.5]
    """
    lengths = [len(completion_text(c)) for c in completions]
    groups: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(repr(prompt), []).append(i)
    right = _correct(completions, answer)
    scores = [0.0] * len(completions)
    for members in groups.values():
        low, high = min(lengths[i] for i in members), max(lengths[i] for i in members)
        if high == low:
            continue
        for i in members:
            value = 0.5 - (lengths[i] - low) / (high - low)
            scores[i] = value if right[i] else min(0.0, value)
    return scores
