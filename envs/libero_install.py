"""LIBERO in a private environment beside the trainer's (:mod:`mmpost.private_env`): its pins cannot
break the suite's. LIBERO 0.1.1 needs robosuite 1.4.0, and robosuite 1.4 needs mujoco < 3.4, while
the trainer's environment has mujoco 4 (the reach scene). LIBERO envs run in worker processes of
that interpreter (:class:`mmpost.envs.subproc.SubprocChunkEnv`); the trainer never imports robosuite.

LIBERO's data folders (``bddl_files/``, ``init_files/``, ``assets/``) are not on PyPI and are never
downloaded: :func:`install_data` unpacks a local copy (a tarball or a folder) once into
``~/.cache/mmpost/libero/data``; ``LIBERO_ROOT`` overrides it.

``MMPOST_LIBERO`` moves the folder (default ``~/.cache/mmpost/libero``).
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from mmpost.private_env import PrivateEnv

# robomimic and libero declare pins that would replace the trainer's torch pair: installed --no-deps
ENV = PrivateEnv("libero", ["robosuite==1.4.0", "mujoco>=3.2,<3.4", "bddl==1.0.1", "future", "easydict", "termcolor",
                            "einops", "hydra-core", "opencv-python-headless"],
                 no_deps=["libero==0.1.1", "robomimic==0.2.0"])
DATA_FOLDERS = ("bddl_files", "init_files", "assets")
# Where a copy of the data may already be on this machine (the project's shared folder).
SHARED_TARBALL = Path("shared") / "libero" / "libero-data.tar.gz"


def _complete(root: Path) -> bool:
    return all((root / name).is_dir() for name in DATA_FOLDERS)


def data_root() -> Path | None:
    """LIBERO's data folder: ``LIBERO_ROOT`` if set, else the one :func:`install_data` unpacked."""
    root = Path(os.environ["LIBERO_ROOT"]) if os.environ.get("LIBERO_ROOT") else ENV.root / "data"
    return root if _complete(root) else None


def find_data(start: Path) -> Path | None:
    """A local copy of LIBERO's data: ``shared/libero/libero-data.tar.gz`` beside ``start`` or any
    folder above it (the layout of this project's machines)."""
    for folder in [start, *start.parents]:
        if (folder / SHARED_TARBALL).is_file():
            return folder / SHARED_TARBALL
    return None


def install_data(source: Path, log=print) -> Path:
    """Unpack (a tarball) or copy (a folder) LIBERO's data folders into ``~/.cache/mmpost/libero/data``."""
    target = ENV.root / "data"
    if _complete(target):
        return target
    source = Path(source)
    shutil.rmtree(target, ignore_errors=True)  # an incomplete copy
    ENV.root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ENV.root) as scratch:  # nothing half-unpacked is ever used
        if source.is_dir():
            found = source if (source / "bddl_files").is_dir() else source / "libero" / "libero"
            for name in DATA_FOLDERS:
                shutil.copytree(found / name, Path(scratch) / name, symlinks=True)
        else:
            log(f"unpacking {source}")
            with tarfile.open(source) as archive:
                archive.extractall(scratch, filter="data")
        missing = [name for name in DATA_FOLDERS if not (Path(scratch) / name).is_dir()]
        if missing:
            raise RuntimeError(f"{source} is not LIBERO's data: no {', '.join(missing)} at its top level")
        Path(scratch).rename(target)
        Path(scratch).mkdir()  # for TemporaryDirectory's cleanup
    return target
