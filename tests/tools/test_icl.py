"""Self-ensembled in-context learning (arXiv 2312.13772): the combinations and the calibration error by
hand, the prompts it builds, and the command on a trained model."""

import doctest
import json
import subprocess
import sys

import pytest

from mmpost.tools import icl
from mmpost.tools.icl import combine, expected_calibration_error, with_examples


def test_combinations_by_hand():
    answers, confidences = ["7", "8", "7", "9"], [0.2, 0.5, 0.3, 0.1]
    # max: 7 -> 0.3, 8 -> 0.5, 9 -> 0.1; renormalised 0.5 / 0.9; the member holding it is 1
    assert combine(answers, confidences, "max") == (1, pytest.approx(0.5 / 0.9))
    # mean: 7 -> 0.5, 8 -> 0.5 (a tie: the first answer seen), 9 -> 0.1: 0.5 / 1.1 from member 2 (its best "7")
    assert combine(answers, confidences, "mean") == (2, pytest.approx(0.5 / 1.1))
    # vote: 7 -> 0.4 + 0.2 beats 8 -> 0.5; the confidence is the winners' mean, from its best member 0
    assert combine(["7", "7", "8"], [0.4, 0.2, 0.5], "vote") == (0, pytest.approx(0.3))
    with pytest.raises(ValueError, match="max, mean, vote"):
        combine(answers, confidences, "median")


def test_expected_calibration_error_by_hand():
    # bins (0.9, 1]: one right at 0.95; (0.8, 0.9]: one wrong at 0.85; (0.2, 0.3]: one wrong at 0.25
    assert expected_calibration_error([0.95, 0.85, 0.25], [True, False, False]) == pytest.approx((0.05 + 0.85 + 0.25) / 3)
    assert expected_calibration_error([1.0, 0.5, 0.5], [True, True, False]) == pytest.approx(0.0)
    assert doctest.testmod(icl, optionflags=doctest.ELLIPSIS).failed == 0


def test_examples_become_earlier_turns_with_their_media():
    example = {"prompt": [{"role": "user", "content": "q1"}], "completion": "a1", "images": ["img1"]}
    row = {"prompt": [{"role": "user", "content": "q"}], "completion": "gold", "answer": "3", "images": ["img"]}
    shown = with_examples(row, [example])
    assert shown["prompt"] == [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
                               {"role": "user", "content": "q"}]
    assert shown["images"] == ["img1", "img"] and shown["answer"] == "3" and row["images"] == ["img"]


def test_icl_command_on_a_trained_model(mmpost_home, tmp_path):
    """``mmpost icl`` on a briefly fine-tuned arithmetic model: one prompt and the ensemble, each with
    its held-out accuracy and calibration error, also as JSON."""
    import mmpost
    from mmpost.engine import train

    run = tmp_path / "run"
    train(mmpost.build_config("arithmetic", recipe="sft", output_dir=str(run),
                              overrides={"sft.steps": 60, "data.train_size": 500, "data.eval_size": 8, "threads": 1,
                                         "eval.sampled": False}))
    out = tmp_path / "icl.json"
    result = subprocess.run([sys.executable, "-m", "mmpost.cli", "icl", "--task", "arithmetic", "--model",
                             str(run / "final"), "--shots", "1", "--members", "3", "--limit", "6", "--set", "threads=1",
                             "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["rows"] == 6 and report["members"] == 3
    for name in ("one_prompt", "ensemble"):
        assert 0 <= report[name]["metric"] <= 1 and 0 <= report[name]["ece"] <= 1
    assert "ensemble" in result.stdout and "ECE" in result.stdout
