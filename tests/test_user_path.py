"""What a new user types, run as they type it (subprocesses of the real CLI): user rewards across
resume, configs as files, model paths that name nothing, plain reward functions in the Python API."""

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
    assert (tmp_path / "a" / "results.json").read_text() == (tmp_path / "b" / "results.json").read_text()
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
