"""Safe execution of untrusted, model-written code.

Untrusted code never runs in the trainer process. :class:`Sandbox` starts ``workers`` warm
fork-servers (:mod:`mmpost.sandbox.zygote`) that have the runner module's heavy imports done
(e.g. matplotlib) and fork one fresh, confined child per job, several jobs at once. Results come back as plain JSON
data; callers validate them and compute any score themselves.

Example::

    with Sandbox("mmpost.rewards.chart_figure", workers=2) as box:
        replies = box.map([code1, code2])   # [{"status": "ok", "result": {...}, ...}, ...]
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import subprocess
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor, TimeoutError
from dataclasses import asdict, dataclass

from mmpost.sandbox.protocol import read_message, write_message

log = logging.getLogger(__name__)
INFRA_RETRIES = 3  # attempts after the first when a job fails for the sandbox's own reasons


@dataclass
class Limits:
    """Per-job limits applied to each child."""

    wall_seconds: float = 5.0  # deadline enforced by the zygote (kills the process group)
    cpu_seconds: int = 4  # RLIMIT_CPU
    memory_bytes: int = 2 << 30  # RLIMIT_AS; matplotlib needs ~0.5 GiB of address space
    file_bytes: int = 16 << 20  # RLIMIT_FSIZE
    open_files: int = 64  # RLIMIT_NOFILE
    processes: int = 16  # RLIMIT_NPROC (only when children run as a dedicated uid)
    demote_after_cpu_seconds: float = 0.25  # a job (all its processes) that used this much CPU gets idle priority
    slot_seconds: float = 0.5  # a job running longer stops counting against the sandbox's concurrency


class _Worker:
    """One zygote process; jobs are tagged with ids and may be in flight concurrently."""

    def __init__(self, runner: str):
        # What no job may read (Landlock's readable roots must not contain them): this process's
        # working directory (its runs/), HOME and MMPOST_HOME. The zygote starts in "/" and moves to
        # a directory of its own; jobs start in theirs.
        private = [os.getcwd(), os.path.expanduser("~"), os.environ.get("MMPOST_HOME", "")]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join(p for p in sys.path if os.path.isabs(p)),
               "MMPOST_SANDBOX_PRIVATE": os.pathsep.join(p for p in private if p)}
        self.process = subprocess.Popen([sys.executable, "-m", "mmpost.sandbox.zygote", runner], cwd="/",
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        hello = read_message(self.process.stdout)
        if not hello or not hello.get("ready"):
            raise RuntimeError(f"sandbox worker for {runner!r} failed to start")
        self.info = hello
        self.pending: dict[int, Future] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self.alive = True
        self._reader = threading.Thread(target=self._read_replies, daemon=True, name="sandbox-replies")
        self._reader.start()

    def _read_replies(self) -> None:
        while (reply := read_message(self.process.stdout)) is not None:
            future = self.pending.pop(reply.pop("id", None), None)
            if future is not None:
                future.set_result(reply)
        self.alive = False
        for future in list(self.pending.values()):  # not these programs' doing: retried elsewhere
            future.set_result({"status": "crash", "infra": True, "error": "sandbox worker died", "result": None})
        self.pending.clear()

    def submit(self, job: dict) -> Future:
        future: Future = Future()
        with self._lock:
            job_id = next(self._ids)
            self.pending[job_id] = future
            try:
                write_message(self.process.stdin, {**job, "id": job_id})
            except (BrokenPipeError, OSError) as error:
                self.pending.pop(job_id, None)
                self.alive = False
                future.set_result({"status": "crash", "infra": True, "error": f"sandbox worker died: {error}",
                                   "result": None})
        return future

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.close()
            except OSError:
                pass
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._reader.join(timeout=5)


class Sandbox:
    """A pool of warm fork-servers running untrusted code for one runner module.

    Args:
        runner: import path of a module with ``prepare()`` and ``execute(code) -> dict``.
        workers: number of fork-servers.
        limits: per-job :class:`Limits`.
        jobs_per_worker: jobs each fork-server runs at once. Jobs are separate processes, so a
            job that sleeps or loops until its deadline does not hold up the others (and a
            looping one is demoted to idle CPU priority after ``limits.demote_after_cpu_seconds``).
    """

    def __init__(self, runner: str, workers: int = 2, limits: Limits | None = None, jobs_per_worker: int = 8):
        self.runner = runner
        self.limits = limits or Limits()
        self._workers = [_Worker(runner) for _ in range(workers)]
        self.capacity = workers * jobs_per_worker  # jobs in flight at most
        self._slots = threading.BoundedSemaphore(self.capacity)
        self._replace_lock = threading.Lock()
        info = self._workers[0].info
        self.network = info["network"]
        self.capabilities = {key: info.get(key) for key in ("network", "landlock", "pidns", "pid_max", "pids_cgroup",
                                                            "drop_uid", "ipcns", "readable", "honest_imports")}
        self.stats = {"executed": 0, "infra_retries": 0}  # replies of a worker; jobs run again after a worker failed
        self._stats_lock = threading.Lock()
        if info.get("honest_imports") != "ok":
            log.warning("sandbox: an honest program's imports fail under the confinement: %s", info.get("honest_imports"))
        if not self.network.startswith(("netns", "userns")):
            log.warning("sandbox: no network namespace available (%s)", self.network)
        if not (info.get("landlock") or info["drop_uid"]):
            log.warning("sandbox: no filesystem confinement on this kernel (no Landlock, no unprivileged uid): "
                        "untrusted code can write wherever this user can")
        self._pool = ThreadPoolExecutor(max_workers=4 * self.capacity, thread_name_prefix="sandbox")
        atexit.register(self.close)

    def _worker(self) -> _Worker:
        """The live worker with the fewest jobs in flight (a dead one is replaced first)."""
        with self._replace_lock:
            for i, worker in enumerate(self._workers):
                if not worker.alive:
                    worker.close()
                    self._workers[i] = _Worker(self.runner)
            return min(self._workers, key=lambda w: len(w.pending))

    def run(self, code: str) -> dict:
        """Run one program; returns the zygote's reply (``status``, ``result``, ``log``, ...).

        A failure that is not the program's doing (``infra``: its worker died, the pipe broke, the
        job could not be started) is retried on a live worker, up to ``INFRA_RETRIES`` times and
        counted in ``stats``, so no honest job is lost to another job that brought a worker down."""
        for attempt in range(INFRA_RETRIES + 1):
            reply = self._run_once(code)
            if not reply.get("infra"):
                self._count("executed")
                return reply
            if attempt < INFRA_RETRIES:
                self._count("infra_retries")
            log.warning("sandbox: %s; %s", reply.get("error"), "retrying the job" if attempt < INFRA_RETRIES else "giving up")
        return reply

    def _count(self, key: str) -> None:
        with self._stats_lock:  # (map runs jobs from many threads)
            self.stats[key] += 1

    def _run_once(self, code: str) -> dict:
        """One attempt. A job holds one of the ``capacity`` slots only while it is young: once it has
        run ``limits.slot_seconds`` it frees its slot, so jobs that sleep or loop until their deadline
        (looping ones are also demoted to idle CPU priority) cannot starve the honest ones queued
        behind them."""
        self._slots.acquire()
        released = False
        try:
            future = self._worker().submit({"code": code, "limits": asdict(self.limits)})
            try:
                return future.result(timeout=self.limits.slot_seconds)
            except TimeoutError:
                self._slots.release()
                released = True
                return future.result()
        finally:
            if not released:
                self._slots.release()

    def map(self, codes: list[str]) -> list[dict]:
        """Run many programs concurrently, replies in input order."""
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
