"""Seeded multi-step arithmetic word problems with worked solutions (a GSM8K-shaped text task).

A problem chains two or three operations on small numbers; its solution writes one line per
operation and ends with ``#### ANSWER`` as GSM8K does, so answer extraction is a rule. Held-out
problems use seeds the training split never draws; the out-of-distribution split (``ood``) chains
four operations, more than any training problem.
"""

from __future__ import annotations

import random
import re

HELDOUT_OFFSET = 10_000_000
OOD_OFFSET = 20_000_000
OOD_OPERATIONS = 4
NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fay", "Gus", "Hana"]
THINGS = ["apples", "books", "coins", "stamps", "shells", "cards"]


def problem(seed: int, operations: int = 0) -> dict:
    """``{"question", "solution", "answer"}`` for ``seed``: 2 or 3 operations drawn from the seed, or
    ``operations`` of them; every intermediate value stays in 0..199 with 2-3 operations (0..219 with 4)."""
    rng = random.Random(seed)
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    value = rng.randint(5, 60)
    sentences = [f"{name} has {value} {thing}."]
    lines = []
    drawn = rng.choice([2, 3])
    for _ in range(operations or drawn):
        if rng.random() < 0.5 or value < 6:
            amount = rng.randint(2, 40)
            sentences.append(f"{name} gets {amount} more.")
            lines.append(f"{value}+{amount}={value + amount}")
            value += amount
        else:
            amount = rng.randint(1, value - 1)
            sentences.append(f"{name} gives away {amount}.")
            lines.append(f"{value}-{amount}={value - amount}")
            value -= amount
    sentences.append(f"How many {thing} does {name} have now?")
    return {"question": " ".join(sentences), "solution": "\n".join(lines) + f"\n#### {value}",
            "answer": str(value), "seed": seed}


def split_seeds(split: str, size: int) -> list[int]:
    """Seeds of a split: ``train`` 0.., ``validation`` from 5M (the training distribution, for choosing
    settings), ``heldout`` from 10M, ``ood`` from 20M (disjoint by construction)."""
    starts = {"train": 0, "validation": 5_000_000, "heldout": HELDOUT_OFFSET, "ood": OOD_OFFSET}
    if split not in starts:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(starts)}")
    return list(range(starts[split], starts[split] + size))


_OPENING = re.compile(r"^(\w+) has (\d+) (\w+)\.$")
_STEP = re.compile(r"^\w+ (gets (\d+) more|gives away (\d+))\.$")


def parse_question(question: str) -> tuple[str, str, int, list[int]] | None:
    """``(name, thing, start, signed amounts)`` of a question this generator writes, else None."""
    sentences = re.findall(r"[^.?]+[.?]", question)
    opening = _OPENING.match(sentences[0].strip()) if sentences else None
    if not opening:
        return None
    amounts = []
    for sentence in sentences[1:-1]:
        step = _STEP.match(sentence.strip())
        if not step:
            return None
        amounts.append(int(step.group(2)) if step.group(2) else -int(step.group(3)))
    return opening.group(1), opening.group(3), int(opening.group(2)), amounts


def write_problem(name: str, thing: str, start: int, amounts: list[int]) -> dict:
    """Question, worked solution and answer for a start value and signed amounts."""
    sentences, lines, value = [f"{name} has {start} {thing}."], [], start
    for amount in amounts:
        sentences.append(f"{name} gets {amount} more." if amount > 0 else f"{name} gives away {-amount}.")
        lines.append(f"{value}{'+' if amount > 0 else '-'}{abs(amount)}={value + amount}")
        value += amount
    sentences.append(f"How many {thing} does {name} have now?")
    return {"question": " ".join(sentences), "solution": "\n".join(lines) + f"\n#### {value}", "answer": str(value)}


def refine_problem(question: str, axis: str, rng: random.Random) -> dict | None:
    """Middo's three rewrites, by rule instead of an LLM: ``complexity`` drops the last operation
    (a simpler problem in the same context), ``quality`` re-derives the worked solution from the
    question, ``diversity`` writes a neighbour (same people and objects, new numbers, same kinds of
    operation). None when the question is not one this generator writes."""
    parsed = parse_question(question)
    if parsed is None:
        return None
    name, thing, start, amounts = parsed
    if axis == "complexity" and len(amounts) > 1:
        amounts = amounts[:-1]
    elif axis == "diversity":
        start = value = rng.randint(5, 60)
        kinds, amounts = [a > 0 for a in amounts], []
        for gets in kinds:
            amount = rng.randint(2, 40) if gets or value < 2 else -rng.randint(1, value - 1)
            amounts.append(amount)
            value += amount
    return write_problem(name, thing, start, amounts)
