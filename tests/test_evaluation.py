"""Held-out evaluation: the metric broken down by a row column."""


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
