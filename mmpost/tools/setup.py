"""``mmpost setup SIMULATOR``: what an optional simulator needs on this machine beyond pip, then a check.

``maniskill``: SAPIEN needs a Vulkan device; on a machine without a GPU driver this installs Mesa 25's
software Vulkan (lavapipe) privately (:mod:`mmpost.envs.vulkan`) and creates a PickCube scene on CPU
physics to prove it works. Idempotent: run it as often as you like (the README's test command does).
"""

from __future__ import annotations

import subprocess
import sys

CHECKS = {
    "maniskill": "from mmpost.envs.maniskill import ManiSkillChunkEnv; "
                 "env = ManiSkillChunkEnv(1, 'PickCube-v1', chunk_len=1, max_chunks=2); env.close()",
}


def setup(what: str) -> list[str]:
    """Prepare ``what`` (one of :data:`CHECKS`) and check it; the lines to print. Raises ``RuntimeError``."""
    if what not in CHECKS:
        raise RuntimeError(f"unknown simulator {what!r}; choose from {', '.join(CHECKS)}")
    lines = []
    if what == "maniskill":
        from mmpost.envs.vulkan import has_hardware_vulkan, install_lavapipe, use_lavapipe_if_needed

        choice = use_lavapipe_if_needed()
        if choice == "none":
            lines.append(f"software Vulkan (Mesa lavapipe) installed: {install_lavapipe()}")
        else:
            lines.append(f"Vulkan: {'a GPU driver' if has_hardware_vulkan() else choice} (nothing to install)")
    check = subprocess.run([sys.executable, "-c", CHECKS[what]], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"{what} check failed: {check.stderr.strip().splitlines()[-1] if check.stderr else check.returncode}")
    lines.append(f"{what}: ready (check passed)")
    return lines
