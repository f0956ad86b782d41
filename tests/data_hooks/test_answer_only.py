"""``rows.answer_only``: a stage trains on its demonstrations without their reasoning (the comparison of
"Debunk the Myth of SFT Generalization"), through the task's own reasoning-free form."""

from pathlib import Path

import pytest

import mmpost
from mmpost.data_hooks import stage_rows


@pytest.mark.parametrize("name, expected", [("arithmetic", "#### {answer}"), ("video_qa", "<answer>{answer}</answer>")])
def test_answer_only_rows_keep_the_answer_and_drop_the_reasoning(name, expected, mmpost_home):
    cfg = mmpost.build_config(name, recipe="sft", overrides={"sft.rows.answer_only": True, "data.train_size": 12,
                                                             "data.eval_size": 2})
    task = mmpost.TASKS.get(name)(cfg)
    rows = {"train": task.rows("train")}
    trained = stage_rows(cfg.stages[0], task, rows, None, {}, {}, 0, Path("."))
    assert len(trained) == 12
    for original, row in zip(rows["train"], trained):
        assert row["completion"] == expected.format(answer=original["answer"]) != original["completion"]
        assert row["prompt"] == original["prompt"]
