"""The sandbox's warm fork-server ("zygote"). Runs as its own process, never inside the trainer.

Started by :class:`mmpost.sandbox.Sandbox` as ``python -m mmpost.sandbox.zygote RUNNER``, where
``RUNNER`` is a module with ``prepare()`` (heavy imports, done once here) and ``execute(code) ->
dict`` (runs in a fresh child per job). Protocol on stdin/stdout: length-prefixed JSON messages;
one job in, one reply out. The zygote never runs untrusted code itself: each job is run by a
child forked from it, which is placed in its own process group, under rlimits, in a fresh temp
dir, with a cleared environment and (when the kernel allows) without network and as an
unprivileged user. Where the kernel allows (:mod:`mmpost.sandbox.confine`), each child is also
process 1 of its own PID namespace, confined by Landlock (reads only the Python installation and
system libraries, writes only its job directory, executes nothing, no TCP, no signals out) and
stripped of capabilities. The zygote enforces a wall-clock deadline and kills the child, and with
it everything it spawned. This module must not import torch (forking a threaded interpreter is unsafe).
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import resource
import select
import signal
import struct
import sys
import tempfile
import time
import traceback

from mmpost.sandbox import confine
from mmpost.sandbox.protocol import write_message

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
NOBODY = 65534
RESULT_CAP = 8 << 20  # bytes a child may send back
LOG_TAIL = 2000
CPU_CHECK_SECONDS = 0.05  # how often a running job's CPU use is read
# A job's wall-clock deadline is pushed back by the time it spent runnable but waiting for a CPU
# (other jobs, the trainer, anything else on a loaded machine), never beyond this many deadlines.
MAX_DEADLINE_EXTENSION = 4.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # characters of the child's stdout/stderr kept for the reason message


def isolate_network() -> str:
    """Move this process (and so every child) into a fresh network namespace; say how."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) == 0:
        return "netns"
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0:
        return "userns+netns"
    return f"none ({os.strerror(ctypes.get_errno())}): children can reach the network"


def run_child(runner, code: str, limits: dict, tmpdir: str, output_fd: int, write_fd: int, drop_uid: bool,
              caps: dict, cgroup: str | None) -> None:
    """Body of the forked child: confine, execute, write one result message, exit."""
    status = 0
    try:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(output_fd, 1)  # the file the zygote opened: it reads back that inode, whatever the job renames
        os.dup2(output_fd, 2)
        os.closerange(3, write_fd)
        os.closerange(write_fd + 1, 65536)
        os.chdir(tmpdir)
        if caps["ipcns"]:  # SysV IPC objects and POSIX queues of this job die with it, unseen by others
            confine.new_ipc_namespace()
        os.environ.clear()
        os.environ.update(MPLBACKEND="Agg", HOME=tmpdir, TMPDIR=tmpdir, MPLCONFIGDIR=tmpdir,
                          OMP_NUM_THREADS="1", PATH="/usr/bin:/bin")
        if cgroup:
            confine.PidsCgroup.enter(cgroup)
        elif caps["pid_max"]:
            confine.limit_pids(limits["processes"])
        if drop_uid:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
        cpu = int(limits["cpu_seconds"])
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_AS, (limits["memory_bytes"],) * 2)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_bytes"],) * 2)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits["open_files"],) * 2)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if drop_uid:  # per-uid count: only meaningful once we are a dedicated uid
            resource.setrlimit(resource.RLIMIT_NPROC, (limits["processes"],) * 2)
        if caps["landlock"]:
            confine.landlock(caps["read"], [tmpdir], caps["landlock"])
        if os.getuid() == 0:
            confine.drop_capabilities()
        job = os.getpid()
        try:
            result = {"ok": True, **runner.execute(code)}
        except BaseException as error:  # noqa: BLE001 - any failure of untrusted code is data
            result = {"ok": False, "error": f"{type(error).__name__}: {error}"[:500]}
        if os.getpid() != job:  # a copy the program forked, returning here: only the job itself reports
            os._exit(0)  # (several writers would interleave their messages into one unreadable reply)
        data = json.dumps(result).encode()
        os.write(write_fd, struct.pack(">I", len(data)))
        view = memoryview(data)
        while view:
            view = view[os.write(write_fd, view):]
    except BaseException:  # noqa: BLE001
        status = 1
        traceback.print_exc()  # into the job's capped output file, returned as the reply's log
    os._exit(status)


class Job:
    """One running child: its pipe, deadlines, what it has sent so far."""

    def __init__(self, runner, job: dict, base_dir: str, drop_uid: bool, caps: dict):
        self.id, self.limits = job.get("id"), job["limits"]
        self.tmpdir = tempfile.mkdtemp(prefix="job-", dir=base_dir)
        # The job's stdout/stderr: created here and read back through this descriptor only, so a job
        # that replaces the file by a link (to /etc/shadow, /dev/zero) changes nothing the zygote reads.
        self.output = os.open(os.path.join(self.tmpdir, "output.txt"),
                              os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        if drop_uid:
            os.chown(self.tmpdir, NOBODY, NOBODY)
            os.fchown(self.output, NOBODY, NOBODY)
        self.cgroups = caps["cgroup"]
        self.cgroup = caps["cgroup"].create(os.path.basename(self.tmpdir), self.limits["processes"]) if caps["cgroup"] else None
        read_fd, write_fd = os.pipe()
        self.start = time.monotonic()
        try:
            self.pid = caps["pidns"].fork() if caps["pidns"] else os.fork()
        except OSError:  # (EAGAIN, ENOMEM): nothing of this job may stay behind
            for fd in (read_fd, write_fd, self.output):
                os.close(fd)
            if self.cgroup:
                self.cgroups.release(self.cgroup)
            remove_tree(self.tmpdir)
            raise
        if self.pid == 0:
            os.close(read_fd)
            run_child(runner, job["code"], self.limits, self.tmpdir, self.output, write_fd, drop_uid, caps, self.cgroup)
        os.close(write_fd)
        self.fd = read_fd
        self.deadline = self.start + self.limits["wall_seconds"]
        self.cpu_budget = self.limits.get("demote_after_cpu_seconds", float("inf"))
        self.check_at = self.start + CPU_CHECK_SECONDS
        self.data = b""
        self.waited = 0.0  # seconds the job's process spent runnable, waiting for a CPU

    def next_event(self) -> float:
        return min(self.deadline, self.check_at)

    def tick(self, now: float) -> str | None:
        """Deadline handling: ``"timeout"`` when it has passed. A job whose processes have used more
        than its CPU budget is demoted to idle priority, so it only gets the CPU the short, honest
        jobs beside it leave over (CPU time, not wall time: an honest job waiting for a busy CPU is
        not punished)."""
        if now >= self.deadline:
            self.deadline = self.extended_deadline()
            if now >= self.deadline:
                return "timeout"
        if now >= self.check_at:
            if tree_cpu_seconds(self.pid) >= self.cpu_budget:
                demote(self.pid)
                self.cpu_budget = 0.0  # keep demoting what it forks from then on
            self.check_at = now + CPU_CHECK_SECONDS
        return None

    def extended_deadline(self) -> float:
        """The deadline counts only time the job could run: what its process waited on a run queue
        (``/proc/PID/schedstat``) is added, so an honest job starved by a busy machine is not killed
        for it, while a sleeper or a job blocked on anything else is. Capped at
        ``MAX_DEADLINE_EXTENSION`` deadlines; a starved busy loop still meets its RLIMIT_CPU there."""
        wall = self.limits["wall_seconds"]
        self.waited = run_queue_seconds(self.pid)
        return self.start + min(wall + self.waited, wall * MAX_DEADLINE_EXTENSION)

    def feed(self) -> str | None:
        """Read what the child sent; a status once the job is over, else None."""
        chunk = os.read(self.fd, 1 << 16)
        if not chunk:
            return "ok"
        self.data += chunk
        if len(self.data) > RESULT_CAP + 4:
            return "oversize"
        if len(self.data) >= 4 and len(self.data) >= 4 + struct.unpack(">I", self.data[:4])[0]:
            return "ok"  # the whole message is in; processes the child left behind may hold the pipe open
        return None

    def finish(self, status: str) -> dict:
        """Kill the child (and, in its PID namespace, everything it started), clean up, build the reply."""
        os.close(self.fd)
        for target in (lambda: os.killpg(self.pid, signal.SIGKILL), lambda: os.kill(self.pid, signal.SIGKILL)):
            try:
                target()
            except (ProcessLookupError, PermissionError):
                pass
        _, wait_status = os.waitpid(self.pid, 0)
        if self.cgroup:
            self.cgroups.release(self.cgroup)
        log = ""
        try:
            size = os.fstat(self.output).st_size  # our own regular file (O_EXCL, O_NOFOLLOW); capped by RLIMIT_FSIZE
            log = os.pread(self.output, LOG_TAIL, max(0, size - LOG_TAIL)).decode("utf-8", "replace")
        except OSError:
            pass
        os.close(self.output)
        remove_tree(self.tmpdir)
        reply = {"id": self.id, "status": status, "seconds": time.monotonic() - self.start, "log": log, "result": None}
        data = self.data
        if status == "timeout":
            reply["error"] = (f"wall-clock deadline of {self.limits['wall_seconds']} s passed "
                              f"(not counting {self.waited:.1f} s spent waiting for a CPU): killed")
        elif status == "oversize":
            reply["error"] = f"result larger than {RESULT_CAP} bytes: killed"
        elif len(data) < 4 or struct.unpack(">I", data[:4])[0] != len(data) - 4:
            reply["status"] = "crash"
            last = log.strip().splitlines()[-1][:200] if log.strip() else ""
            reply["error"] = f"child ended without a result ({_death(wait_status)})" + (f"; its last output: {last}" if last else "")
        else:
            try:
                reply["result"] = json.loads(data[4:])
            except ValueError:
                reply["status"] = "crash"
                reply["error"] = "child sent malformed result"
        return reply


def remove_tree(path: str) -> None:
    """Delete the directory ``path`` and everything in it, whatever its shape: iterative (no recursion
    limit, one directory descriptor open at a time), never following a link, every step relative to
    a descriptor of the directory being emptied. What cannot be deleted is skipped (and left to the
    zygote's final cleanup), never retried in a loop."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    depth, stuck = 0, set()  # directories (by inode) that could not be emptied
    try:
        while True:
            below, failed = None, False
            with os.scandir(fd) as entries:
                for entry in entries:
                    try:
                        if not entry.is_dir(follow_symlinks=False):
                            os.unlink(entry.name, dir_fd=fd)
                        elif entry.inode() in stuck:
                            failed = True
                        elif below is None:
                            try:
                                os.rmdir(entry.name, dir_fd=fd)
                            except OSError:  # not empty: empty it first
                                below = os.open(entry.name, flags, dir_fd=fd)
                    except OSError:
                        failed = True
            if below is not None:
                os.close(fd)
                fd, depth = below, depth + 1
            elif depth:
                if failed:
                    stuck.add(os.fstat(fd).st_ino)
                parent = os.open("..", flags, dir_fd=fd)  # the directory it was opened from
                os.close(fd)
                fd, depth = parent, depth - 1
            else:
                break
    except OSError:
        pass
    finally:
        os.close(fd)
    try:
        os.rmdir(path)
    except OSError:
        pass


def run_job(runner, job: dict, base_dir: str, drop_uid: bool, caps: dict) -> dict:
    """Run one job to the end (the zygote's start-up probe)."""
    running = Job(runner, job, base_dir, drop_uid, caps)
    while True:
        status = running.tick(time.monotonic())
        if status:
            return running.finish(status)
        ready, _, _ = select.select([running.fd], [], [], max(0.0, running.next_event() - time.monotonic()))
        if ready and (status := running.feed()):
            return running.finish(status)


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (from ``/proc/PID/task/TID/children``)."""
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        try:
            for tid in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{tid}/children") as f:
                    stack.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return found


def run_queue_seconds(pid: int) -> float:
    """Seconds ``pid`` has spent runnable but waiting for a CPU (second field of
    ``/proc/PID/schedstat``); 0 where the kernel does not report it."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and its live descendants."""
    total = 0
    for target in descendants(pid):
        try:
            with open(f"/proc/{target}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        except (OSError, IndexError, ValueError):
            continue
    return total / CLOCK_TICKS


def demote(pid: int) -> None:
    """Idle CPU priority (``SCHED_IDLE``: runs only when nothing else wants the CPU) for a job's
    whole process tree; children it forks later inherit it.

    A job is a session of its own, and where the kernel groups sessions for scheduling
    (``/proc/sys/kernel/sched_autogroup_enabled``) each session gets an equal share of the CPU
    whatever its tasks' priorities: a busy loop alone in its session would keep a full share. So
    the session's group is lowered to nice 19 as well (every session in the tree: a process that
    calls ``setsid`` starts a new one)."""
    for target in descendants(pid):
        try:
            os.sched_setscheduler(target, os.SCHED_IDLE, os.sched_param(0))
        except OSError:
            try:
                os.setpriority(os.PRIO_PROCESS, target, 19)
            except OSError:
                pass
        try:
            with open(f"/proc/{target}/autogroup", "w") as f:
                f.write("19")
        except OSError:
            pass  # no autogroups on this kernel (then SCHED_IDLE alone does it), or the process is gone


SIGNAL_REASONS = {signal.SIGXCPU: "CPU time limit exceeded", signal.SIGXFSZ: "file size limit exceeded",
                  signal.SIGKILL: "killed", signal.SIGSEGV: "segmentation fault"}


def _death(wait_status: int) -> str:
    if os.WIFSIGNALED(wait_status):
        number = os.WTERMSIG(wait_status)
        name = signal.Signals(number).name if number in signal.Signals._value2member_map_ else str(number)
        return f"signal {name}: {SIGNAL_REASONS.get(number, 'terminated')}"
    return f"exit status {os.WEXITSTATUS(wait_status)}"


def kernel_at_least(major: int, minor: int) -> bool:
    release = os.uname().release.split(".")
    try:
        return (int(release[0]), int(release[1].split("-")[0])) >= (major, minor)
    except (IndexError, ValueError):
        return False


def capabilities() -> dict:
    """What confinement this machine's kernel gives the children (see :mod:`mmpost.sandbox.confine`)."""
    pidns = confine.PidNamespaces()
    cgroup = confine.PidsCgroup(f"mmpost-sandbox-{os.getpid()}")
    return {"pidns": pidns if pidns.available else None, "landlock": confine.landlock_abi(),
            "cgroup": cgroup if cgroup.available else None, "ipcns": confine.ipc_namespaces_available(),
            # pid_max is per PID namespace only from Linux 6.14; before, writing it would change the
            # whole machine's, so it is never touched there.
            "pid_max": pidns.available and kernel_at_least(6, 14)}


PROBE_LIMITS = {"wall_seconds": 60, "cpu_seconds": 60, "memory_bytes": 4 << 30, "file_bytes": 16 << 20,
                "open_files": 64, "processes": 16}


def probe(runner, base_dir: str, drop_uid: bool, caps: dict) -> str:
    """Run the runner's ``PROBE_CODE`` (an honest program importing what honest programs import)
    under the final confinement: ``""`` when it works, else why it failed."""
    reply = run_job(runner, {"code": getattr(runner, "PROBE_CODE", "pass"), "limits": PROBE_LIMITS}, base_dir,
                    drop_uid, caps)
    if reply["status"] == "ok" and reply["result"]["ok"]:
        return ""
    return str((reply["result"] or {}).get("error") or reply.get("error") or reply["status"])[:300]


def serve(runner, stdin, stdout, base_dir: str, drop_uid: bool, caps: dict) -> None:
    """Run jobs concurrently as they arrive; reply to each (tagged with its ``id``) when it ends.
    A sleeping or looping job never holds up the others, and no job can stop this loop: a job that
    could not be started or cleaned up gets an ``infra`` reply (the trainer retries it elsewhere).
    Returns when stdin closes."""
    frames = FrameReader(stdin.fileno())
    running: dict[int, Job] = {}
    open_input = True

    def end(job: Job, status: str) -> None:
        try:
            reply = job.finish(status)
        except Exception as error:  # noqa: BLE001 - never lose the loop (and the other jobs) to one job
            reply = {"id": job.id, "status": "crash", "infra": True, "result": None, "log": "",
                     "error": f"sandbox could not finish the job: {type(error).__name__}: {error}"}
        write_message(stdout, reply)

    while open_input or running:
        if caps["cgroup"]:
            caps["cgroup"].sweep()
        now = time.monotonic()
        for job in list(running.values()):
            if status := job.tick(now):
                end(running.pop(job.fd), status)
        wait = max(0.0, min((j.next_event() for j in running.values()), default=now + 60) - time.monotonic())
        ready, _, _ = select.select(([frames.fd] if open_input else []) + list(running), [], [], wait)
        for fd in ready:
            if fd == frames.fd:
                messages = frames.read()
                if messages is None:
                    open_input = False
                    continue
                for message in messages:
                    try:
                        job = Job(runner, message, base_dir, drop_uid, caps)
                    except OSError as error:  # e.g. fork failed: the machine, not the program
                        write_message(stdout, {"id": message.get("id"), "status": "crash", "infra": True,
                                               "result": None, "log": "", "error": f"sandbox could not start the job: {error}"})
                        continue
                    running[job.fd] = job
            elif fd in running and (status := running[fd].feed()):
                end(running.pop(fd), status)


class FrameReader:
    """Length-prefixed JSON messages from a raw file descriptor, without blocking on partial ones."""

    def __init__(self, fd: int):
        self.fd, self.buffer = fd, b""

    def read(self) -> list[dict] | None:
        """Complete messages now available; None at end of input."""
        chunk = os.read(self.fd, 1 << 20)
        if not chunk:
            return None
        self.buffer += chunk
        messages = []
        while len(self.buffer) >= 4 and len(self.buffer) >= 4 + (size := struct.unpack(">I", self.buffer[:4])[0]):
            messages.append(json.loads(self.buffer[4:4 + size]))
            self.buffer = self.buffer[4 + size:]
        return messages


def main() -> None:
    runner = importlib.import_module(sys.argv[1])
    runner.prepare()
    network = isolate_network()
    base_dir = tempfile.mkdtemp(prefix="mmpost-sandbox-")
    os.chmod(base_dir, 0o711)
    os.chdir(base_dir)  # never the trainer's working directory
    caps = capabilities()
    # the trainer's working directory, HOME and MMPOST_HOME: no readable root may contain them
    caps["read"] = confine.readable_roots(os.environ.get("MMPOST_SANDBOX_PRIVATE", "").split(os.pathsep))
    # Children run as nobody only where nobody can read what honest programs import (a Python under
    # a private home, e.g. /root/.pyenv, it cannot); Landlock confines them either way.
    drop_uid = "userns" not in network and os.getuid() == 0 and not probe(runner, base_dir, True, caps)
    honest = "ok" if drop_uid else (probe(runner, base_dir, False, caps) or "ok")
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    write_message(stdout, {"ready": True, "network": network, "drop_uid": drop_uid, "pid": os.getpid(),
                           "pidns": bool(caps["pidns"]), "landlock": caps["landlock"], "pid_max": caps["pid_max"],
                           "pids_cgroup": bool(caps["cgroup"]), "ipcns": caps["ipcns"], "readable": caps["read"],
                           "honest_imports": honest})
    try:
        serve(runner, stdin, stdout, base_dir, drop_uid, caps)
    finally:
        remove_tree(base_dir)
        if caps["cgroup"]:
            caps["cgroup"].close()


if __name__ == "__main__":
    main()
