"""What a new user types, run as they type it (subprocesses of the real CLI): user rewards across
resume, configs as files, model paths that name nothing, plain reward functions in the Python API."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import yaml

import mmpost

QUICK = ["--max-steps", "1", "--set", "data.train_size=8", "--set", "data.eval_size=2", "--set", "eval.sampled=false",
         "--set", "threads=1", "--set", "trackers=", "--set", "checkpoint_every=1"]


def _cli(args, home, cwd, timeout=600):
    return subprocess.run([sys.executable, "-m", "mmpost.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env={**os.environ, "MMPOST_HOME": home})


def _one_line_error(done, *expected):
    """A user error: exit 2, one ``mmpost: error:`` line on stderr holding ``expected``, no traceback."""
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    line = next(line for line in done.stderr.splitlines() if line.startswith("mmpost: error:"))
    for text in expected:
        assert text in line, line


@pytest.fixture
def reward_file(tmp_path):
    file = tmp_path / "my_rewards.py"
    file.write_text("def brevity(completions, **kwargs):\n    return [1.0 / (1 + len(c)) for c in completions]\n")
    return file


def test_resume_of_a_run_with_a_reward_from_a_file(mmpost_home, tmp_path, reward_file):
    """`--resume` loads the run's `--reward FILE:FN` again (it used to die with a KeyError); a moved file
    is one line saying what to pass, and `--reward NEW_PLACE` with `--resume` works."""
    done = _cli(["train", "--task", "arithmetic", "--reward", "my_rewards.py:brevity", "--output-dir", "run", *QUICK],
                mmpost_home, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["rewards"] == ["answer_match", "brevity"]
    assert saved["reward_files"] == [f"{reward_file}:brevity"]  # absolute: resumable from any directory
    assert _cli(["train", "--resume", str(tmp_path / "run")], mmpost_home, "/").returncode == 0

    reward_file.rename(tmp_path / "moved.py")
    _one_line_error(_cli(["train", "--resume", "run"], mmpost_home, tmp_path),
                    "reward file not found", "--reward NEW_FILE.py:brevity")
    done = _cli(["train", "--resume", "run", "--reward", "moved.py:brevity"], mmpost_home, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["reward_files"] == [
        f"{tmp_path / 'moved.py'}:brevity"]


def test_a_runs_config_yaml_reproduces_the_run(mmpost_home, tmp_path, reward_file):
    """`mmpost train --config RUN/config.yaml` runs the same config (seed, rewards, stages, data) in a new
    run directory and ends with the same metrics; the model card says so and counts the steps run."""
    first = _cli(["train", "--task", "arithmetic", "--seed", "3", "--reward", "my_rewards.py:brevity",
                  "--output-dir", "a", *QUICK], mmpost_home, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    again = _cli(["train", "--config", "a/config.yaml", "--output-dir", "b"], mmpost_home, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    a, b = (yaml.safe_load((tmp_path / d / "config.yaml").read_text()) for d in "ab")
    assert {**a, "output_dir": ""} == {**b, "output_dir": ""}
    results = [json.loads((tmp_path / d / "results.json").read_text()) for d in "ab"]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in results] == [  # (wall times differ)
        {k: v for k, v in results[1].items() if k != "seconds"}] * 2
    card = (tmp_path / "a" / "final" / "README.md").read_text()
    assert "`brevity` × 1" in card and "mmpost train --config" in card
    assert "| sft | sft | 1 |" in card  # the steps run (--max-steps 1), not the default's


def test_mmpost_config_writes_a_commented_runnable_config(mmpost_home, tmp_path):
    done = _cli(["config", "arithmetic", "--set", "sft.steps=3"], mmpost_home, tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    fields = [line for line in lines if ":" in line and not line.lstrip().startswith(("#", "- "))
              and not line.rstrip().endswith(":")]  # leaf fields (a section header has no value)
    uncommented = [line for line in fields if "  # " not in line and not line.startswith("task:")]
    assert not uncommented, uncommented[:10]
    (tmp_path / "my.yaml").write_text(done.stdout)
    cfg = mmpost.build_config(config=str(tmp_path / "my.yaml"))
    assert cfg.task == "arithmetic" and cfg.stage("sft").steps == 3
    assert cfg.to_dict() == mmpost.build_config("arithmetic", overrides={"sft.steps": 3}).to_dict()
    (tmp_path / "typo.yaml").write_text(done.stdout.replace("train_size:", "trian_size:"))
    _one_line_error(_cli(["train", "--config", "typo.yaml"], mmpost_home, tmp_path, timeout=120),
                    "data.trian_size", "Did you mean 'train_size'")
    _one_line_error(_cli(["train", "--task", "arithmetic", "--recipe", "my.yaml"], mmpost_home, tmp_path,
                         timeout=120), "--config my.yaml")


def test_a_model_path_that_names_nothing_is_one_line(mmpost_home, tmp_path):
    """A path to nothing, a directory without a model, a hub id that cannot be fetched: one line, and no
    empty run directory left behind. A run directory given as --model means its final/."""
    _one_line_error(_cli(["train", "--task", "arithmetic", "--model", "./nothing", "--output-dir", "r"],
                         mmpost_home, tmp_path, timeout=120), "./nothing", "no such directory")
    (tmp_path / "empty").mkdir()
    _one_line_error(_cli(["eval", "--task", "arithmetic", "--model", "empty"], mmpost_home, tmp_path, timeout=120),
                    "not a model directory", "config.json")
    hub = _cli(["train", "--task", "arithmetic", "--model", "NoSuchOrg/no-such-model", "--output-dir", "r", *QUICK],
               mmpost_home, tmp_path, timeout=300)
    _one_line_error(hub, "NoSuchOrg/no-such-model")
    assert not (tmp_path / "r").exists()

    run = tmp_path / "run"
    mmpost.train("arithmetic", output_dir=str(run), max_steps=1, threads=1, trackers=[],
                 **{"data.train_size": 8, "data.eval_size": 2, "eval.sampled": False})
    assert mmpost.build_config("arithmetic", model=str(run)).model == str(run / "final")
    done = _cli(["eval", "--task", "arithmetic", "--model", str(run), "--set", "data.eval_size=2",
                 "--set", "eval.sampled=false"], mmpost_home, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]


def test_plain_reward_functions_in_the_python_api(mmpost_home, tmp_path, reward_file):
    """`mmpost.train(rewards=[fn])` as TRL users write it: functions are registered under their names; one
    from a file is recorded and reloaded on resume; one the script defined must be passed again."""
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent("""
        import sys
        import mmpost
        from my_rewards import brevity

        def is_short(completions, **kwargs):
            return [float(len(c) < 40) for c in completions]

        settings = {"data.train_size": 8, "data.eval_size": 2, "eval.sampled": False, "checkpoint_every": 1}
        if sys.argv[1] == "start":
            out = mmpost.train("arithmetic", rewards=["answer_match", brevity, is_short], max_steps=1, threads=1,
                               trackers=[], output_dir="run", **settings)
            print("metrics", sorted(out["after"]["greedy"]))
        else:
            mmpost.train(resume="run", rewards=[is_short])
            print("resumed")
    """))
    env = {**os.environ, "MMPOST_HOME": mmpost_home}
    done = subprocess.run([sys.executable, str(script), "start"], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "metrics ['answer_match', 'brevity', 'is_short']" in done.stdout
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["reward_files"] == [f"{reward_file}:brevity"]  # is_short lives in the script: not recorded
    _one_line_error(_cli(["train", "--resume", "run"], mmpost_home, tmp_path), "'is_short' is not registered")
    done = subprocess.run([sys.executable, str(script), "resume"], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=600)
    assert done.returncode == 0 and "resumed" in done.stdout, done.stderr[-3000:]
    with pytest.raises(ValueError, match="lambda"):
        mmpost.build_config("arithmetic", rewards=[lambda completions, **kw: [0.0] * len(completions)])


def _warnings_above_bars(stderr: str) -> None:
    """Every WARNING starts its own line: a progress bar being drawn was cleared first, not written through."""
    for line in stderr.split("\n"):
        if "WARNING" in line:
            assert not line.split("WARNING")[0].split("\r")[-1].strip(), line[:300]


def test_a_quick_dpo_run_says_why_it_learns_nothing(mmpost_home, tmp_path):
    """No pairs: one warning with the reason (above the bars), no NaN in metrics.jsonl, no scheduler warning;
    the start summary and the note that --max-steps runs do not learn; no per-file loading bars."""
    done = _cli(["train", "--task", "arithmetic", "--recipe", "dpo", "--output-dir", "run", *QUICK],
                mmpost_home, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("no preference pairs") == 1 and "all rewards were equal" in done.stderr
    assert "lr_scheduler" not in done.stderr and "Loading weights" not in done.stderr + done.stdout
    _warnings_above_bars(done.stderr)
    assert "NaN" not in (tmp_path / "run" / "metrics.jsonl").read_text()
    seconds = json.loads((tmp_path / "run" / "results.json").read_text())["seconds"]  # where the time went
    assert set(seconds) == {"data", "model", "evaluation", "train sft", "train dpo"} and min(seconds.values()) >= 0
    for text in ("mmpost: task arithmetic", "stages: sft (sft, 1 steps", "torch threads", "run directory: run",
                 "[dpo:dpo] ", "note: --max-steps 1 capped every stage"):
        assert text in done.stdout, text


def test_lora_runs_are_quiet_and_the_readme_export_works(mmpost_home, tmp_path):
    two = _cli(["train", "--task", "arithmetic", "--set", "peft.r=4", "--output-dir", "two", *QUICK], mmpost_home,
               tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "bitsandbytes" not in two.stderr and "FutureWarning" not in two.stderr, two.stderr[-2000:]
    assert "there is no final/adapter/" in two.stdout and not (tmp_path / "two" / "final" / "adapter").exists()
    one = _cli(["train", "--task", "arithmetic", "--set", "peft.r=4", "--set", "rl.steps=0", "--output-dir", "one",
                *QUICK], mmpost_home, tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    export = _cli(["export", "one/final/adapter", "--out", "merged"], mmpost_home, tmp_path)
    assert export.returncode == 0, export.stderr[-3000:]
    assert (tmp_path / "merged" / "config.json").is_file()


def test_skipped_rows_are_reported_once_with_their_reason_and_counted(mmpost_home, tmp_path, reward_file):
    """skip_bad_rows: one warning per bad row with its reason, the count in results.json and the card; the
    report shows each sample's total, every reward and the reference beside the output."""

    good = [{"question": f"{i}+1?", "solution": f"{i}+1={i + 1}\n#### {i + 1}", "answer": str(i + 1)} for i in range(9)]
    lines = [json.dumps(r) for r in good[:4]] + ['{"question": "cut short'] + [json.dumps(r) for r in good[4:]]
    (tmp_path / "problems.jsonl").write_text("\n".join(lines) + "\n")
    done = _cli(["train", "--task", "arithmetic", "--reward", "my_rewards.py:brevity", "--output-dir", "run",
                 "--set", "data.path=problems.jsonl", "--set", "data.skip_bad_rows=true", *QUICK], mmpost_home,
                tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    skipped = [line for line in done.stderr.splitlines() if "skipping bad row" in line]
    assert len(skipped) == 1 and "problems.jsonl:5: invalid JSON" in skipped[0], skipped
    assert json.loads((tmp_path / "run" / "results.json").read_text())["skipped_rows"] == {"problems.jsonl": 1}
    assert "1 malformed rows of problems.jsonl skipped" in (tmp_path / "run" / "final" / "README.md").read_text()
    report = _cli(["report", "run"], mmpost_home, tmp_path, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    page = (tmp_path / "run" / "report" / "index.html").read_text()
    assert "total " in page and "brevity " in page and "answer_match " in page and ">reference<" in page


def test_a_failing_reward_file_says_where(mmpost_home, tmp_path):
    (tmp_path / "broken.py").write_text("def scores(completions, **kw):\n    return [len(c) / 0 for c in completions]\n")
    done = _cli(["train", "--task", "arithmetic", "--reward", "broken.py:scores", "--set", "reward_errors=raise",
                 *QUICK], mmpost_home, tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    line = next(line for line in done.stderr.splitlines() if line.startswith("mmpost: error:"))
    assert f"{tmp_path / 'broken.py'}:2 in <listcomp>" in line or f"{tmp_path / 'broken.py'}:2 in scores" in line, line
    assert "MMPOST_DEBUG=1" in line


def test_small_mistakes_get_precise_messages(mmpost_home, tmp_path, reward_file):
    _one_line_error(_cli(["train", "--task", "arithmetic", "--reward", "my_rewards.py:brevty"], mmpost_home, tmp_path,
                         timeout=120), "no function 'brevty'", "Did you mean 'brevity'")
    _one_line_error(_cli(["train", "--task", "arithmetic", "--set", "dpo.preference.beta=0.2"], mmpost_home, tmp_path,
                         timeout=120), "'dpo' is neither a config section nor a stage", "stages: sft, rl")
    _one_line_error(_cli(["train", "--task", "arithmetic", "--set", "sft.steps=-5"], mmpost_home, tmp_path,
                         timeout=120), "sft.steps must be >= 0", "got -5")
    (tmp_path / "bad.jsonl").write_text('{"question": "1+1?", "solution": "1+1=2\\n#### 2", "answer": 2,}\n')
    from mmpost.data.jsonl import DataError, read_rows

    with pytest.raises(DataError, match=r"bad.jsonl:1: invalid JSON: .* at column \d+ \(near .*\"answer\": 2,\}"):
        list(read_rows(tmp_path / "bad.jsonl"))
