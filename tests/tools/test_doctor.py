"""``mmpost doctor``: versions, extras, sandbox and device; its install hints name real extras."""

import os
import subprocess
import sys


def _cli(args, home, timeout=600):
    return subprocess.run([sys.executable, "-m", "mmpost.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "MMPOST_HOME": home})


def test_doctor_reports_versions_extras_sandbox_and_device(mmpost_home):
    done = _cli(["doctor"], mmpost_home, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    for expected in ("torch ", "transformers ", "optional extras:", "vllm", "device:", "sandbox: network="):
        assert expected in done.stdout, expected


def test_doctor_install_hints_name_real_extras():
    import tomllib
    from pathlib import Path

    from mmpost.tools.doctor import EXTRAS

    extras = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {extra for extra, _ in EXTRAS.values()} <= set(extras)
