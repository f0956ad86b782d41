"""The arithmetic generator: its out-of-distribution split and the unchanged training problems."""

import re

from mmpost.data.arithmetic import OOD_OPERATIONS, problem, split_seeds


def _check(p: dict, operations: int) -> None:
    lines = p["solution"].split("\n")
    assert len(lines) == operations + 1 and lines[-1] == f"#### {p['answer']}"
    value = int(re.match(r"(\d+)", lines[0]).group(1))
    for line in lines[:-1]:  # each worked line is right and continues from the previous result
        a, op, b, result = re.fullmatch(r"(\d+)([+-])(\d+)=(\d+)", line).groups()
        assert int(a) == value and int(result) == (int(a) + int(b) if op == "+" else int(a) - int(b))
        value = int(result)
    assert str(value) == p["answer"]


def test_ood_problems_chain_more_operations_than_any_training_problem():
    train = [problem(s) for s in split_seeds("train", 300)]
    assert {p["solution"].count("\n") for p in train} == {2, 3}
    ood_seeds = split_seeds("ood", 100)
    assert not set(ood_seeds) & set(split_seeds("train", 300)) and not set(ood_seeds) & set(split_seeds("heldout", 300))
    for seed in ood_seeds:
        _check(problem(seed, OOD_OPERATIONS), OOD_OPERATIONS)
    for p in train:
        _check(p, p["solution"].count("\n"))


def test_training_problems_are_what_they_were():
    """Adding the OOD split left the seeded generator's problems as they were (runs and caches stay valid)."""
    assert problem(0)["question"] == PROBLEM_0
    assert problem(0, 0) == problem(0)


# problem(0) as the generator wrote it before the OOD split (the first 2,000 training and 300 held-out
# problems were compared whole when the split was added)
PROBLEM_0 = "Gus has 7 stamps. Gus gives away 4. Gus gets 21 more. Gus gives away 12. How many stamps does Gus have now?"
