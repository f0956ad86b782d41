"""arithmetic: the problem generator, its answer rewards, user JSONL rows, and the task's rewriting rules
(Middo's refine)."""

import random

import pytest


def test_arithmetic_rewrites():
    from mmpost.tasks.arithmetic import Arithmetic

    row = Arithmetic(Arithmetic.default_config()).rows("heldout")[0]
    rng = random.Random(0)
    simpler = Arithmetic.refine(row, "complexity", rng)
    assert simpler["completion"].count("\n") == row["completion"].count("\n") - 1
    broken = {**row, "completion": "1+1=2\n#### 2"}
    assert Arithmetic.refine(broken, "quality", rng)["completion"] == row["completion"]  # re-derived
    neighbour = Arithmetic.refine(row, "diversity", rng)
    assert neighbour["prompt"][0]["content"].split()[0] == row["prompt"][0]["content"].split()[0]
    assert Arithmetic.refine({**row, "prompt": [{"role": "user", "content": "What is 2+2?"}]}, "quality", rng) is None


def test_arithmetic_data_and_rewards(tmp_path):
    from mmpost.config import TrainConfig
    from mmpost.data.arithmetic import problem, split_seeds
    from mmpost.data.jsonl import DataError
    from mmpost.rewards.answer import answer_match, answer_partial
    from mmpost.tasks.arithmetic import Arithmetic

    assert problem(7) == problem(7) and not set(split_seeds("train", 100)) & set(split_seeds("heldout", 100))
    p = problem(3)  # the worked solution's last line is the answer, and each line's arithmetic is right
    *lines, last = p["solution"].splitlines()
    assert last == f"#### {p['answer']}"
    for line in lines:
        expression, result = line.split("=")
        assert eval(expression) == int(result)  # noqa: S307 (our own generator's text)
    assert answer_match(None, [p["solution"]], answer=[p["answer"]]) == [1.0]
    assert answer_partial(None, ["#### 1", "no answer"], answer=["2", "2"]) == [0.1, 0.0]
    path = tmp_path / "problems.jsonl"
    path.write_text('{"question": "1+1?", "solution": "1+1=2\\n#### 2", "answer": "2"}\n' * 9
                    + '{"question": "2+2?", "solution": "2+2=4\\n#### 4"}\n')
    cfg = TrainConfig(task="arithmetic")
    cfg.data.path, cfg.data.eval_size = str(path), 1
    with pytest.raises(DataError, match="problems.jsonl:10"):
        Arithmetic(cfg).rows("train")
    cfg.data.skip_bad_rows = True
    rows = Arithmetic(cfg).rows("train")
    assert len(rows) == 8 and rows[0]["answer"] == "2" and rows[0]["completion"].endswith("#### 2")


def test_step_match_scores_each_worked_line_against_the_reference_by_hand():
    from mmpost.config import TrainConfig
    from mmpost.rewards.answer import step_match
    from mmpost.tasks.arithmetic import Arithmetic

    row = Arithmetic(TrainConfig(task="arithmetic")).rows("train")[0]
    assert row["steps"] == [line.split("=")[1] for line in row["completion"].splitlines()[:-1]]
    steps = [["3", "24", "12"]] * 5
    completions = ["7-4=3\n3+21=24\n24-12=12\n#### 12",  # every line: 3/3
                   "7-4=3\n3+21=25\n25-12=13\n#### 13",  # a slip in line 2: 1/3
                   "7-4=3\n3+21=24\n24-12=12\n12+0=12\n#### 12",  # one line too many: 1 - 0.25
                   "#### 12",  # the answer alone: no worked line reaches a step
                   "7 - 4 = 3\n#### 3"]  # spaces are fine: 1/3
    assert step_match(None, completions, steps=steps) == pytest.approx([1.0, 1 / 3, 0.75, 0.0, 1 / 3])
    assert step_match(None, ["#### 1"], answer=["1"]) == [None]  # rows without a steps column: not applicable
