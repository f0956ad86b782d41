"""A private Python environment beside the trainer's, for an optional part whose pins would break it.

LIBERO needs mujoco < 3.4 (the trainer has 4.x), nerfstudio pulls its own versions of half the
ecosystem. Each gets a virtual environment that sees the trainer's packages
(``--system-site-packages``: torch, numpy, mmpost itself) and installs only its own on top, with the
trainer's torch pair pinned so pip can never replace it. The trainer runs the part in worker
processes of that interpreter and never imports it. Folders live under ``~/.cache/mmpost/NAME``
(``MMPOST_PRIVATE_ENVS`` moves them; not under ``MMPOST_HOME``: shared by every run and test cache).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import metadata, util
from pathlib import Path

PINNED = ("torch", "torchvision", "numpy")  # what the private environment must share with the trainer's


@dataclass
class PrivateEnv:
    name: str
    packages: list[str]
    no_deps: list[str] = field(default_factory=list)  # installed without their declared dependencies

    @property
    def root(self) -> Path:
        base = os.environ.get("MMPOST_PRIVATE_ENVS", Path.home() / ".cache" / "mmpost")
        return Path(os.environ.get(f"MMPOST_{self.name.upper()}", Path(base) / self.name))

    @property
    def python(self) -> Path:
        return self.root / "venv" / "bin" / "python"

    def installed(self) -> bool:
        return (self.root / "venv" / "installed").exists()

    def python_for(self, module: str) -> str | None:
        """Where ``module`` runs: None when this environment imports it, else this private
        environment's Python once installed (None too when it is not: the caller's import fails
        with its own message)."""
        if util.find_spec(module) is None and self.installed():
            return str(self.python)
        return None

    def install(self, log=print) -> Path:
        """Create and fill the environment (idempotent); its interpreter."""
        venv = self.root / "venv"
        if self.installed():
            return self.python
        log(f"creating {venv} (sees this environment's packages; {self.name}'s own go into it)")
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--clear", str(venv)], check=True)
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as constraints:
            constraints.write("".join(f"{p}=={metadata.version(p)}\n" for p in PINNED))
        pip = [str(self.python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-c", constraints.name]
        try:
            log(f"installing {' '.join(self.packages)} (with this environment's {', '.join(PINNED)} pinned)")
            subprocess.run(pip + self.packages, check=True)
            if self.no_deps:
                log(f"installing without dependencies {' '.join(self.no_deps)}")
                subprocess.run(pip + ["--no-deps"] + self.no_deps, check=True)
        finally:
            os.unlink(constraints.name)
        (venv / "installed").write_text(" ".join(self.packages + self.no_deps) + "\n")
        return self.python
