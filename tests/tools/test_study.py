"""``mmpost study``: equal budgets per arm, the paired statistics by hand, and a quick study end to end."""

import json
import subprocess
import sys

import pytest

import mmpost
from mmpost.tools.study import arm_overrides, optimiser_steps, paired


def test_paired_difference_and_its_standard_error_by_hand():
    # differences 0.1, 0.3, 0.2: mean 0.2, sample std 0.1, SE 0.1 / sqrt(3)
    got = paired({0: 0.5, 1: 0.6, 2: 0.4}, {0: 0.4, 1: 0.3, 2: 0.2})
    assert got["diff"] == pytest.approx(0.2) and got["se"] == pytest.approx(0.1 / 3 ** 0.5, abs=1e-6)
    assert paired({0: 0.5}, {1: 0.4}) == {"diff": None, "se": None, "seeds": 0}  # no seed in common


def test_every_arm_gets_the_same_optimiser_steps():
    task = mmpost.TASKS.get("arithmetic")
    default = task.default_config()
    total = default.stages[0].steps + default.stages[-1].steps * default.stages[-1].updates_per_step()
    for arm in ("sft", "sft_answer_only", "sft_rl", "chord", "luffy", "relift"):
        recipe, sets = arm_overrides(task, arm, quick=False)
        assert optimiser_steps("arithmetic", recipe, sets) == total, arm
    recipe, sets = arm_overrides(mmpost.TASKS.get("reach"), "sft", quick=True)  # RL steps of 4 updates each
    assert optimiser_steps("reach", recipe, sets) == optimiser_steps("reach", *arm_overrides(mmpost.TASKS.get("reach"),
                                                                                              "sft_rl", quick=True))


def test_quick_study_reports_in_and_out_of_distribution(mmpost_home, tmp_path):
    root = tmp_path / "study"
    result = subprocess.run([sys.executable, "-m", "mmpost.cli", "study", "--task", "arithmetic", "--quick",
                             "--seeds", "0,1", "--arms", "sft,sft_rl", "--root", str(root), "--set", "threads=1"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((root / "study.json").read_text())
    assert len(report["runs"]) == 4 and report["ood"].startswith("problems of 4 operations")
    for arm in ("sft", "sft_rl"):
        row = report["arms"][arm]
        assert 0 <= row["id"]["mean"] <= 1 and 0 <= row["ood"]["mean"] <= 1 and row["samples"] > 0
    assert report["arms"]["sft_rl"]["samples"] > report["arms"]["sft"]["samples"]  # RL samples groups
    assert report["arms"]["sft_rl"]["id"]["vs_sft"]["seeds"] == 2
    assert "| `sft_rl` |" in result.stdout and "out-of-distribution" in result.stdout
    assert (root / "study.png").stat().st_size > 1000 and (root / "study_curves.png").stat().st_size > 1000
    total = report["arms"]["sft"]["steps"]  # 15 updates in quick mode: a point every 15 // 8 = 1 update
    for run in report["runs"]:  # the learning curve: ID and OOD at the same budgets in every arm
        assert run["curve"]["updates"] == [float(u) for u in range(1, total + 1)]
        assert all(0 <= v <= 1 for v in run["curve"]["id"] + run["curve"]["ood"])
    final = next(r for r in report["runs"] if r["arm"] == "sft")  # the last point is the final model's
    assert final["curve"]["id"][-1] == pytest.approx(final["id"]) and final["curve"]["ood"][-1] == pytest.approx(final["ood"])
    room = report["headroom"]  # the SFT model's pass@k on training prompts (4 samples each in quick mode)
    assert 0 <= room["pass@1"] <= room["pass@2"] <= room["pass@4"] <= 1 and 0 <= room["zero_variance_share"] <= 1
    for run in report["runs"]:  # the OOD evaluation ran on 4-operation problems
        ood = json.loads((root / f"{run['arm']}-seed{run['seed']}" / "ood.json").read_text())
        assert "answer_match" in ood["greedy"] and ood["by"] == {"greedy": {"4": ood["greedy"]["answer_match"]},
                                                                 "column": "operations"}


def test_pass_at_k_by_hand():
    from mmpost.tools.headroom import pass_at_k

    # 8 samples, 2 right: pass@1 = 2/8; pass@4 = 1 - C(6, 4) / C(8, 4) = 1 - 15/70
    assert pass_at_k(8, 2, 1) == pytest.approx(0.25)
    assert pass_at_k(8, 2, 4) == pytest.approx(1 - 15 / 70)
    assert pass_at_k(8, 0, 8) == 0.0 and pass_at_k(8, 7, 2) == 1.0


def test_best_of_k_by_hand_and_by_enumeration():
    import itertools
    import statistics

    from mmpost.tools.headroom import best_of_k

    # rewards -0.3, -0.1, -0.2, -0.4: best of 2 = mean of the max over the 6 pairs
    # (-0.1 in 3 pairs, -0.2 in 2, -0.3 in 1) = (-0.3 - 0.4 - 0.3) / 6
    rewards = [-0.3, -0.1, -0.2, -0.4]
    assert best_of_k(rewards, 2) == pytest.approx(-1.0 / 6)
    assert best_of_k(rewards, 1) == pytest.approx(-0.25) and best_of_k(rewards, 4) == pytest.approx(-0.1)
    sampled = [0.7, 0.1, 0.4, 0.4, 0.9, 0.0, 0.3, 0.5]
    for k in (2, 3, 5):
        exact = statistics.fmean(max(c) for c in itertools.combinations(sampled, k))
        assert best_of_k(sampled, k) == pytest.approx(exact)


def test_a_failed_run_names_its_log_and_how_to_resume(tmp_path):
    from mmpost.tools.study import train_once

    run_dir = tmp_path / "sft-seed0"
    run_dir.mkdir()
    with pytest.raises(RuntimeError, match=r"failed \(exit 2\): .*unknown config key 'sft.stepz'.*sft-seed0.log.*resumes"):
        train_once("arithmetic", None, 0, run_dir, {"sft.stepz": 3}, [])


def test_one_failed_run_does_not_cancel_the_others(mmpost_home, tmp_path, monkeypatch):
    """A run that fails (here: a typo in its arm's settings) is reported at the end; every other run finishes."""
    import mmpost.tools.study as study_module

    real = study_module.arm_overrides

    def broken_sft(task_cls, arm, quick):
        recipe, sets = real(task_cls, arm, quick)
        return recipe, ({**sets, "sft.stepz": 1} if arm == "sft" else sets)

    monkeypatch.setattr(study_module, "arm_overrides", broken_sft)
    with pytest.raises(RuntimeError, match=r"1 of 2 study runs failed; the others finished:\n.*sft-seed0.*stepz"):
        study_module.study("arithmetic", [0], ["sft", "sft_rl"], root=str(tmp_path), jobs=1, quick=True,
                           sets={"threads": 1})
    assert "after" in json.loads((tmp_path / "sft_rl-seed0" / "results.json").read_text())
