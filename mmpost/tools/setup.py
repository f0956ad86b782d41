"""``mmpost setup PART...``: what an optional simulator or backend needs on this machine beyond pip, then a check.

``maniskill``: SAPIEN needs a Vulkan device; on a machine without a GPU driver this installs Mesa 25's
software Vulkan (lavapipe) privately (:mod:`mmpost.envs.vulkan`) and creates a PickCube scene on CPU
physics to prove it works.

``nerfstudio``: nerfstudio (the MRC reward's NeRF backend) in a private environment: its pins (timm
0.6, protobuf 3.20, ...) would break this one; the check builds nerfacto's configuration there.

``libero``: LIBERO's pins (robosuite 1.4, mujoco < 3.4) go into a private environment beside this one
(:mod:`mmpost.envs.libero_install`), its data folders are unpacked from a local copy (``--data``, or
``shared/libero/libero-data.tar.gz`` found above the working directory), and a LIBERO task is created
and stepped in that environment. Without data the software is installed and the check says what is
missing (LIBERO's data are never downloaded).

Idempotent: run it as often as you like (the README's test command does).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CHECKS = {
    "maniskill": "from mmpost.envs.maniskill import ManiSkillChunkEnv; "
                 "env = ManiSkillChunkEnv(1, 'PickCube-v1', chunk_len=1, max_chunks=2); env.close()",
    "libero": "import numpy as np; from mmpost.envs.libero import LiberoChunkEnv; "
              "env = LiberoChunkEnv(1, 'libero_object/3', chunk_len=1, max_chunks=1, obs='state'); "
              "env.chunk_step(np.zeros((1, 1, 7))); env.close()",
    "nerfstudio": "from nerfstudio.configs.method_configs import method_configs; from mmpost.rewards.mrc_nerfstudio "
                  "import _offline_lpips; _offline_lpips(); method_configs['nerfacto']",
}


def _check(what: str, python: str = sys.executable, env: dict | None = None) -> str:
    check = subprocess.run([python, "-c", CHECKS[what]], capture_output=True, text=True, env=env)
    if check.returncode != 0:
        raise RuntimeError(f"{what} check failed: {check.stderr.strip().splitlines()[-1] if check.stderr else check.returncode}")
    return f"{what}: ready (check passed)"


def _maniskill() -> list[str]:
    from mmpost.envs.vulkan import has_hardware_vulkan, install_lavapipe, use_lavapipe_if_needed

    choice = use_lavapipe_if_needed()
    if choice == "none":
        lines = [f"software Vulkan (Mesa lavapipe) installed: {install_lavapipe()}"]
    else:
        lines = [f"Vulkan: {'a GPU driver' if has_hardware_vulkan() else choice} (nothing to install)"]
    return lines + [_check("maniskill")]


def _libero(data: str | None) -> list[str]:
    from mmpost.envs import libero_install

    python = libero_install.ENV.install(log=lambda line: print(f"libero: {line}", flush=True))
    lines = [f"LIBERO environment: {python.parent.parent} (robosuite 1.4, mujoco < 3.4; this one keeps its own)"]
    source = Path(data) if data else libero_install.find_data(Path.cwd()) or libero_install.find_data(Path(__file__).resolve())
    if libero_install.data_root() is None and source is None:
        return lines + ["libero: software installed; no LIBERO data on this machine (pass --data TARBALL_OR_FOLDER, "
                        "or set LIBERO_ROOT): LIBERO tasks and tests need it"]
    root = libero_install.data_root() or libero_install.install_data(source)
    lines.append(f"LIBERO data: {root}")
    env = {**os.environ, "LIBERO_ROOT": str(root), "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    return lines + [_check("libero", str(python), env)]


def _nerfstudio() -> list[str]:
    from mmpost.rewards.mrc_nerfstudio import ENV

    python = ENV.install(log=lambda line: print(f"nerfstudio: {line}", flush=True))
    return [f"nerfstudio environment: {python.parent.parent} (nerfstudio's pins stay there)", _check("nerfstudio", str(python))]


def setup(what: str, data: str | None = None) -> list[str]:
    """Prepare ``what`` (one of :data:`CHECKS`) and check it; the lines to print. Raises ``RuntimeError``."""
    if what not in CHECKS:
        raise RuntimeError(f"unknown simulator {what!r}; choose from {', '.join(CHECKS)}")
    try:
        return {"maniskill": _maniskill, "libero": lambda: _libero(data), "nerfstudio": _nerfstudio}[what]()
    except subprocess.CalledProcessError as error:
        raise RuntimeError(f"{what}: `{' '.join(map(str, error.cmd))}` failed (exit {error.returncode})") from None
