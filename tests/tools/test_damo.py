"""DaMo (arXiv 2510.19336): the candidate mixtures, the rows a mixture trains on, the predictor finding
the best mixture of a known score surface, and the command's trials end to end."""

import json
import math
import subprocess
import sys

import pytest

from mmpost.tools.damo import candidate_mixtures, mixture_rows, rank_mixtures


def test_candidates_are_all_compositions_of_the_batch():
    assert candidate_mixtures(2, 2) == [(0, 2), (1, 1), (2, 0)]
    three = candidate_mixtures(3, 16)
    assert len(three) == math.comb(16 + 2, 2) and all(sum(c) == 16 for c in three) and len(set(three)) == len(three)


def test_mixture_rows_keep_the_proportions():
    sizes = {"a": 1000, "b": 500, "c": 2000}
    # 8 : 4 : 4 of 16 -> a leads; b joins with 4/8 of a's size = 500 rows (all of b), c with 500 of 2000
    assert mixture_rows("sft", ["a", "b", "c"], (8, 4, 4), sizes) == {
        "sft.data": "a", "sft.rows.mix": {"b": 1.0, "c": 0.25}}
    assert mixture_rows("sft", ["a", "b"], (0, 16), sizes) == {"sft.data": "b", "sft.rows.mix": {}}


def test_predictor_finds_the_best_mixture_of_a_known_surface():
    """Scores peak at 3/4 of the first split: from 7 trials the ranked best is within one row of 12 of 16."""
    surface = lambda x: [1 - (x - 0.75) ** 2, 0.5 - 0.5 * (x - 0.75) ** 2]  # noqa: E731
    trials = [((k, 16 - k), surface(k / 16)) for k in (0, 3, 5, 8, 10, 14, 16)]
    ranking, r2 = rank_mixtures(trials, 16, steps=3000)
    assert r2 > 0.95
    assert abs(ranking[0][0][0] - 12) <= 1
    assert len(ranking) == 17 and ranking[0][1] >= ranking[-1][1]


def test_damo_command_runs_its_trials(mmpost_home, tmp_path):
    out = tmp_path / "damo"
    result = subprocess.run([sys.executable, "-m", "mmpost.cli", "damo", "--task", "arithmetic", "--trials", "3",
                             "--trial-steps", "4", "--batch", "4", "--out", str(out), "--set", "threads=1",
                             "--set", "data.train_size=200", "--set", "data.eval_size=8", "--set", "eval.sampled=false",
                             "--set", "sft.batch_size=4"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((out / "damo.json").read_text())
    assert len(report["trials"]) == 3 and len({json.dumps(t["mixture"]) for t in report["trials"]}) == 3
    assert all(sum(t["mixture"].values()) == 4 for t in report["trials"])
    assert "answer_match" in report["scores"] and len(report["ranking"]) == 5  # all C(5, 1) candidates
    assert "mmpost train --task arithmetic --set sft.data=" in result.stdout
    for i in range(3):
        assert (out / f"trial-{i}" / "final").is_dir()
