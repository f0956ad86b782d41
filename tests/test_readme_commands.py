"""The README's commands, as written there: every ``mmpost`` command parses; every ``mmpost train`` command
resolves to a valid config (recipes, rewards, keys; files it names are made here, placeholders skipped);
the short ones run verbatim, and the quick run the README says learns does learn."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import mmpost

README = Path(__file__).resolve().parents[1] / "README.md"
PLACEHOLDERS = ("/path/", "-X/", "-X ", "runs/X", "20261127", "runs/lora/")  # stand for the reader's own files
RUN_VERBATIM = {"mmpost list", "mmpost list recipes", "mmpost list models", "mmpost list recipes --markdown",
                "mmpost config arithmetic --set sft.steps=500"}
QUICK_RUN_THAT_LEARNS = "mmpost train --task reach --set rl.steps=20"


def readme_commands() -> list[str]:
    """Every ``mmpost ...`` command in the README's bash blocks, without its comment."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        for line in block.splitlines():
            for part in line.split("&&"):
                part = part.split("  #")[0].split(" > ")[0].strip()  # (a redirection is the shell's, not ours)
                if part.startswith("mmpost "):
                    commands.append(part)
    return commands


def test_the_readme_has_commands_and_the_quick_run():
    commands = readme_commands()
    assert len(commands) > 40 and QUICK_RUN_THAT_LEARNS in commands and RUN_VERBATIM <= set(commands)


@pytest.mark.parametrize("command", readme_commands())
def test_every_readme_command_parses_and_every_train_command_resolves(command, tmp_path, monkeypatch):
    from mmpost.cli import build_parser, train_config

    args = build_parser().parse_args(shlex.split(command)[1:])
    if args.command != "train" or args.resume or any(p in command for p in PLACEHOLDERS):
        return
    monkeypatch.chdir(tmp_path)  # the files a README command names, made as a reader would
    (tmp_path / "my_recipe.yaml").write_text("stages:\n  - {name: sft, kind: sft, steps: 10}\n")
    (tmp_path / "my_rewards.py").write_text("def count_words(completions, **kw):\n"
                                            "    return [len(c.split()) / 50 for c in completions]\n")
    (tmp_path / "charts.parquet").write_bytes(b"")  # the config only names it
    if args.config:  # as the README's line before it writes it
        from mmpost.config_file import annotated_yaml

        (tmp_path / args.config).write_text(annotated_yaml(mmpost.build_config("arithmetic")))
    cfg = train_config(args)
    assert cfg.task == (args.task or ("arithmetic" if args.config else "chart2code")) and cfg.stages


@pytest.mark.parametrize("command", sorted(RUN_VERBATIM))
def test_short_readme_commands_run_verbatim(command, mmpost_home, tmp_path):
    done = subprocess.run([sys.executable, "-m", "mmpost.cli", *shlex.split(command)[1:]], capture_output=True,
                          text=True, cwd=tmp_path, env={**os.environ, "MMPOST_HOME": mmpost_home}, timeout=300)
    assert done.returncode == 0 and done.stdout.strip(), done.stderr[-3000:]


def test_the_readme_quick_run_learns(mmpost_home, tmp_path):
    """The README's quick run, verbatim: held-out success rises (README: ~0.09 -> ~0.27)."""
    import json

    done = subprocess.run([sys.executable, "-m", "mmpost.cli", *shlex.split(QUICK_RUN_THAT_LEARNS)[1:]],
                          capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "MMPOST_HOME": mmpost_home}, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "run directory:" in done.stdout and "stages: sft" in done.stdout  # the start summary
    results = json.loads(next((tmp_path / "runs").glob("reach-*/results.json")).read_text())
    before, after = results["before"]["greedy"]["success"], results["after"]["greedy"]["success"]
    assert after >= before + 0.1, (before, after)
