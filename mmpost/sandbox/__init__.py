"""Safe execution of untrusted, model-written code.

Untrusted code never runs in the trainer process. :class:`Sandbox` starts ``workers`` warm
fork-servers (:mod:`mmpost.sandbox.zygote`) that have the runner module's heavy imports done
(e.g. matplotlib) and fork one fresh, confined child per job. Results come back as plain JSON
data; callers validate them and compute any score themselves.

Example::

    with Sandbox("mmpost.rewards.chart_figure", workers=2) as box:
        replies = box.map([code1, code2])   # [{"status": "ok", "result": {...}, ...}, ...]
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from mmpost.sandbox.protocol import read_message, write_message

log = logging.getLogger(__name__)


@dataclass
class Limits:
    """Per-job limits applied to each child."""

    wall_seconds: float = 5.0  # deadline enforced by the zygote (kills the process group)
    cpu_seconds: int = 4  # RLIMIT_CPU
    memory_bytes: int = 2 << 30  # RLIMIT_AS; matplotlib needs ~0.5 GiB of address space
    file_bytes: int = 16 << 20  # RLIMIT_FSIZE
    open_files: int = 64  # RLIMIT_NOFILE
    processes: int = 16  # RLIMIT_NPROC (only when children run as a dedicated uid)


class _Worker:
    def __init__(self, runner: str):
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "MPLBACKEND": "Agg",
               "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.process = subprocess.Popen([sys.executable, "-m", "mmpost.sandbox.zygote", runner],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        hello = read_message(self.process.stdout)
        if not hello or not hello.get("ready"):
            raise RuntimeError(f"sandbox worker for {runner!r} failed to start")
        self.info = hello

    def run(self, job: dict) -> dict:
        write_message(self.process.stdin, job)
        reply = read_message(self.process.stdout)
        if reply is None:
            raise BrokenPipeError("sandbox worker died")
        return reply

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()


class Sandbox:
    """A pool of warm fork-servers running untrusted code for one runner module.

    Args:
        runner: import path of a module with ``prepare()`` and ``execute(code) -> dict``.
        workers: number of fork-servers (jobs run concurrently up to this number).
        limits: per-job :class:`Limits`.
    """

    def __init__(self, runner: str, workers: int = 2, limits: Limits | None = None):
        self.runner = runner
        self.limits = limits or Limits()
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._workers = [_Worker(runner) for _ in range(workers)]
        for worker in self._workers:
            self._idle.put(worker)
        info = self._workers[0].info
        self.network = info["network"]
        self.capabilities = {key: info.get(key) for key in ("network", "landlock", "pidns", "pid_max", "drop_uid")}
        if not self.network.startswith(("netns", "userns")):
            log.warning("sandbox: no network namespace available (%s)", self.network)
        if not self._workers[0].info["drop_uid"]:
            log.warning("sandbox: children run as this process's user (no unprivileged uid usable)")
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox")
        atexit.register(self.close)

    def run(self, code: str) -> dict:
        """Run one program; returns the zygote's reply (``status``, ``result``, ``log``, ...)."""
        worker = self._idle.get()
        job = {"code": code, "limits": asdict(self.limits)}
        try:
            reply = worker.run(job)
        except (BrokenPipeError, OSError) as error:
            worker.close()
            self._workers.remove(worker)
            worker = _Worker(self.runner)
            self._workers.append(worker)
            reply = {"status": "crash", "error": f"sandbox worker died: {error}", "result": None}
        finally:
            self._idle.put(worker)
        return reply

    def map(self, codes: list[str]) -> list[dict]:
        """Run many programs concurrently over the workers, replies in input order."""
        return list(self._pool.map(self.run, codes))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for worker in self._workers:
            worker.close()
        self._workers = []

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
