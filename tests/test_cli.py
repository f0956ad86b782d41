"""``mmpost eval``, ``mmpost list``, shell completion and the help of every command."""

import json
import os
import subprocess
import sys

import mmpost


def _cli(args, home, timeout=600):
    return subprocess.run([sys.executable, "-m", "mmpost.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "MMPOST_HOME": home})


def _outputs(directory):
    return [json.loads(line)["output"] for line in (directory / "samples.jsonl").read_text().splitlines()]


def test_eval_reproduces_a_runs_held_out_evaluation(mmpost_home, tmp_path):
    """`mmpost eval` of a model gives the same greedy outputs and metrics as a training run's evaluation
    of that model (here: the untrained default, evaluated by a run with no training steps)."""
    settings = {"data.train_size": 8, "data.eval_size": 4, "eval.sampled": False, "threads": 1}
    run = tmp_path / "run"
    results = mmpost.train("arithmetic", output_dir=str(run), **settings, **{"sft.steps": 0, "rl.steps": 0})
    model = mmpost.build_config("arithmetic")
    from mmpost.registry import TASKS

    model_dir = TASKS.get("arithmetic")(model).model_path()
    out = tmp_path / "eval"
    done = _cli(["eval", "--model", model_dir, "--task", "arithmetic", "--out", str(out),
                 *sum((["--set", f"{k}={v}"] for k, v in settings.items()), [])], mmpost_home)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "greedy answer_match" in done.stdout
    assert _outputs(out / "samples") == _outputs(run / "samples" / "before")
    assert json.loads((out / "results.json").read_text())["greedy"] == results["before"]["greedy"]


def test_list_models_names_every_tasks_default(mmpost_home):
    from mmpost.registry import TASKS

    done = _cli(["list", "models"], mmpost_home, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    for name in TASKS.names():
        line = next(line for line in lines if line.split()[:1] == [name])
        assert TASKS.get(name).default_model in line and "--model" in line


def test_every_command_has_help_with_examples():
    from mmpost.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    missing = [name for name, sub in commands.items() if "example" not in (sub.description or "")]
    assert not missing, f"commands without examples in --help: {missing}"


def test_bash_completion_script_is_valid_and_complete(mmpost_home, tmp_path):
    done = _cli(["completion"], mmpost_home, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    script = tmp_path / "mmpost.bash"
    script.write_text(done.stdout)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0  # parses
    # completing "mmpost train --ta" offers --task; "mmpost train --task gro" offers grounding
    probe = ('source {0}; COMP_WORDS=(mmpost train --ta); COMP_CWORD=2; _mmpost; echo "${{COMPREPLY[@]}}"; '
             'COMP_WORDS=(mmpost train --task gro); COMP_CWORD=3; _mmpost; echo "${{COMPREPLY[@]}}"').format(script)
    lines = subprocess.run(["bash", "-c", probe], capture_output=True, text=True).stdout.splitlines()
    assert "--task" in lines[0].split() and lines[1].split() == ["grounding"]
