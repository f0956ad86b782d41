"""A Vulkan device for SAPIEN (ManiSkill) on machines without a GPU: Mesa's lavapipe, privately.

SAPIEN needs a Vulkan device even for state observations without rendering ("failed to find a
rendering device"). On a GPU machine the NVIDIA driver provides one. On a CPU machine Mesa's
software rasteriser lavapipe does, but Debian 12's own (Mesa 22.3) lacks
``descriptorBindingPartiallyBound`` and SAPIEN refuses it; Mesa 25's lavapipe from
bookworm-backports works. :func:`install_lavapipe` downloads that one package and unpacks it into
a private folder (``apt-get download`` + ``dpkg -x``, ~11 MB, the system's Mesa untouched);
:func:`use_lavapipe_if_needed` points the Vulkan loader at it (``VK_ICD_FILENAMES``) before SAPIEN
starts, unless the user chose a driver or a GPU driver is installed.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path

PACKAGE = "mesa-vulkan-drivers"
SUITE = "bookworm-backports"  # Mesa 25.0 for Debian 12
ICD_DIRS = ("/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d", "/usr/local/share/vulkan/icd.d")
GPU_DRIVERS = ("nvidia", "radeon", "intel")  # ICD file names of hardware drivers


def lavapipe_dir() -> Path:
    """Where the private lavapipe lives (``MMPOST_LAVAPIPE``, default ``~/.cache/mmpost/lavapipe``).

    Not under ``MMPOST_HOME``: it is a system component shared by every run and test cache."""
    return Path(os.environ.get("MMPOST_LAVAPIPE", Path.home() / ".cache" / "mmpost" / "lavapipe"))


def icd_file(root: Path | None = None) -> Path:
    return (root or lavapipe_dir()) / "lvp_icd.json"


def has_hardware_vulkan() -> bool:
    return any(name in f.name for d in ICD_DIRS if Path(d).is_dir() for f in Path(d).iterdir() for name in GPU_DRIVERS)


def use_lavapipe_if_needed() -> str:
    """Select the private lavapipe for this process (and its children) when nothing better is set.

    Returns what was chosen: ``"user"`` (``VK_ICD_FILENAMES`` / ``VK_DRIVER_FILES`` already set),
    ``"gpu"``, ``"lavapipe"`` or ``"none"`` (no driver: SAPIEN will fail; see :func:`missing_device_hint`)."""
    if os.environ.get("VK_ICD_FILENAMES") or os.environ.get("VK_DRIVER_FILES"):
        return "user"
    if has_hardware_vulkan():
        return "gpu"
    if icd_file().is_file():
        os.environ["VK_ICD_FILENAMES"] = str(icd_file())
        return "lavapipe"
    return "none"


def missing_device_hint() -> str:
    return ("SAPIEN (ManiSkill) needs a Vulkan device: on a GPU machine install the NVIDIA driver's Vulkan "
            "ICD; on a CPU-only Debian 12 machine run `mmpost setup maniskill` (installs Mesa 25's software "
            f"Vulkan, lavapipe, into {lavapipe_dir()} without touching the system), or set VK_ICD_FILENAMES "
            "to a Vulkan 1.3 driver with descriptorBindingPartiallyBound")


def install_lavapipe(root: Path | None = None) -> Path:
    """Download Mesa 25's ``mesa-vulkan-drivers`` from Debian's bookworm-backports and unpack it into
    ``root`` (default :func:`lavapipe_dir`); write an ICD file with the driver's absolute path.

    Needs ``apt-get`` and ``dpkg`` (Debian 12) and the Debian mirror; idempotent."""
    root = Path(root or lavapipe_dir())
    if icd_file(root).is_file():
        return icd_file(root)
    arch = {"x86_64": "x86_64", "aarch64": "aarch64"}.get(platform.machine())
    if arch is None or not Path("/usr/bin/apt-get").exists():
        raise RuntimeError(f"install_lavapipe needs Debian 12's apt-get on x86_64 or aarch64 ({platform.machine()}): "
                           + missing_device_hint())
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as work:
        work = Path(work)
        (work / "lists" / "partial").mkdir(parents=True)
        (work / "sources").mkdir()
        (work / "cache" / "archives" / "partial").mkdir(parents=True)
        (work / "sources" / "backports.sources").write_text(
            f"Types: deb\nURIs: http://deb.debian.org/debian\nSuites: {SUITE}\nComponents: main\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
        apt = ["-o", "Dir::Etc::SourceList=/dev/null", "-o", f"Dir::Etc::SourceParts={work / 'sources'}",
               "-o", f"Dir::State::Lists={work / 'lists'}", "-o", f"Dir::Cache={work / 'cache'}",
               "-o", "Debug::NoLocking=1", "-o", "APT::Sandbox::User=" + os.environ.get("USER", "root"), "-q"]
        _run(["apt-get", *apt, "update"], work)
        _run(["apt-get", *apt, "download", f"{PACKAGE}/{SUITE}"], work)
        deb = next(work.glob(f"{PACKAGE}_*.deb"))
        _run(["dpkg", "-x", str(deb), str(root / "root")], work)
    driver = next((root / "root").rglob("libvulkan_lvp.so"))
    manifest = json.loads(next((root / "root").rglob("lvp_icd*.json")).read_text())
    manifest["ICD"]["library_path"] = str(driver)  # absolute: no LD_LIBRARY_PATH needed
    tmp = icd_file(root).with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest))
    tmp.replace(icd_file(root))
    return icd_file(root)


def _run(command: list[str], cwd: Path) -> None:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:1] + command[-2:])} failed (exit {result.returncode}): "
                           f"{(result.stderr or result.stdout).strip()[-800:]}")
