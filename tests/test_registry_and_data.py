import json

import pytest

import mmpost
from mmpost.data.charts import HELDOUT_SEED_OFFSET, chart_program, split_seeds
from mmpost.data.jsonl import DataError, read_jsonl
from mmpost.registry import REWARDS, TASKS, load_reward_file


def test_unknown_names_suggest():
    with pytest.raises(KeyError, match="Did you mean 'chart2code'"):
        TASKS.get("chart2cod")
    with pytest.raises(KeyError, match="Did you mean 'chart_render'"):
        mmpost.build_config("chart2code", rewards=["chart_rendr"])


def test_reward_decorator_and_file(tmp_path):
    @mmpost.reward("test_words")
    def words(prompts, completions, **columns):
        return [float(len(c.split())) for c in completions]

    assert REWARDS.get("test_words") is words
    file = tmp_path / "my_rewards.py"
    file.write_text("def count_chars(prompts, completions, **kw):\n    return [float(len(c)) for c in completions]\n")
    name = load_reward_file(f"{file}:count_chars")
    assert name == "count_chars" and REWARDS.get(name)(["p"], ["abc"]) == [3.0]
    with pytest.raises(AttributeError):
        load_reward_file(f"{file}:missing")


def test_generator_is_seeded_and_splits_disjoint():
    assert chart_program(7) == chart_program(7)
    assert set(split_seeds("train", 4000)).isdisjoint(split_seeds("heldout", 100))
    assert split_seeds("heldout", 3)[0] == HELDOUT_SEED_OFFSET
    compile(chart_program(123)["code"], "<gen>", "exec")


def test_jsonl_errors_name_file_and_line(tmp_path):
    from PIL import Image

    Image.new("RGB", (20, 20), "white").save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    path = tmp_path / "data.jsonl"
    rows = [{"image": "ok.png", "code": "x = 1"}, {"image": "ok.png"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DataError, match=r"data.jsonl:2: missing field 'code'"):
        list(read_jsonl(path, required=("image", "code")))
    path.write_text(json.dumps({"image": "broken.png", "code": "x"}) + "\n{oops\n")
    with pytest.raises(DataError, match=r"data.jsonl:1: image .* failed to decode"):
        list(read_jsonl(path, required=("image", "code")))
    path.write_bytes(b'{"image": "ok.png", "code": "a\\u0000b"}\n\xff\xfe\n{"image": "ok.png", "code": "x = 1"}\n')
    good = list(read_jsonl(path, required=("image", "code"), skip_bad_rows=True))
    assert [r["source"].rsplit(":", 1)[1] for r in good] == ["3"]


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
    cfg.data.path = str(path)
    with pytest.raises(DataError, match="problems.jsonl:10"):
        Arithmetic(cfg).rows("train")
    cfg.data.skip_bad_rows = True
    rows = Arithmetic(cfg).rows("train")
    assert len(rows) == 8 and rows[0]["answer"] == "2" and rows[0]["completion"].endswith("#### 2")


def test_heldout_metric_by_a_row_column(mmpost_home):
    """``evaluate(..., breakdown=COLUMN)`` reports the metric's mean per value of the column, the
    same scores as ``per_sample`` grouped by hand (a real tiny model, ReFT's partial reward)."""
    from mmpost.config import EvalConfig
    from mmpost.evaluation import evaluate
    from mmpost.registry import REWARDS
    from mmpost.tasks.arithmetic import Arithmetic

    task = Arithmetic(Arithmetic.default_config())
    rows = task.rows("heldout")[:8]
    rewards = {"answer_partial": REWARDS.get("answer_partial")}
    out = evaluate(task.policy(), rows, rewards, {"answer_partial": 1.0}, EvalConfig(batch_size=8, sampled=False),
                   "answer_partial", breakdown="operations")
    scores = out["per_sample"]["greedy"]
    for value in {str(r["operations"]) for r in rows}:
        group = [s for s, r in zip(scores, rows) if str(r["operations"]) == value]
        assert out["by"]["greedy"][value] == sum(group) / len(group)
    assert out["by"]["column"] == "operations" and set(out["by"]["greedy"]) <= {"2", "3"}
