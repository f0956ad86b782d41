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
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback

from mmpost.sandbox import confine
from mmpost.sandbox.protocol import read_message, write_message

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
NOBODY = 65534
RESULT_CAP = 8 << 20  # bytes a child may send back
LOG_TAIL = 2000  # characters of the child's stdout/stderr kept for the reason message


def isolate_network() -> str:
    """Move this process (and so every child) into a fresh network namespace; say how."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) == 0:
        return "netns"
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0:
        return "userns+netns"
    return f"none ({os.strerror(ctypes.get_errno())}): children can reach the network"


def run_child(runner, code: str, limits: dict, tmpdir: str, write_fd: int, drop_uid: bool, caps: dict) -> None:
    """Body of the forked child: confine, execute, write one result message, exit."""
    status = 0
    try:
        os.setsid()
        out = os.open(os.path.join(tmpdir, "output.txt"), os.O_WRONLY | os.O_CREAT, 0o600)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.closerange(3, write_fd)
        os.closerange(write_fd + 1, 65536)
        os.chdir(tmpdir)
        os.environ.clear()
        os.environ.update(MPLBACKEND="Agg", HOME=tmpdir, TMPDIR=tmpdir, MPLCONFIGDIR=tmpdir,
                          OMP_NUM_THREADS="1", PATH="/usr/bin:/bin")
        if caps["pid_max"]:
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
            confine.landlock(confine.readable_roots(), [tmpdir], caps["landlock"])
        if os.getuid() == 0:
            confine.drop_capabilities()
        try:
            result = {"ok": True, **runner.execute(code)}
        except BaseException as error:  # noqa: BLE001 - any failure of untrusted code is data
            result = {"ok": False, "error": f"{type(error).__name__}: {error}"[:500]}
        data = json.dumps(result).encode()
        os.write(write_fd, struct.pack(">I", len(data)))
        view = memoryview(data)
        while view:
            view = view[os.write(write_fd, view):]
    except BaseException:  # noqa: BLE001
        status = 1
        traceback.print_exc()  # into the job's capped output file, returned as the reply's log
    os._exit(status)


def run_job(runner, job: dict, base_dir: str, drop_uid: bool, caps: dict) -> dict:
    """Fork one child for ``job``, wait for its result or the deadline, clean everything up."""
    tmpdir = tempfile.mkdtemp(prefix="job-", dir=base_dir)
    if drop_uid:
        os.chown(tmpdir, NOBODY, NOBODY)
    read_fd, write_fd = os.pipe()
    start = time.monotonic()
    pid = caps["pidns"].fork() if caps["pidns"] else os.fork()
    if pid == 0:
        os.close(read_fd)
        run_child(runner, job["code"], job["limits"], tmpdir, write_fd, drop_uid, caps)
    os.close(write_fd)
    deadline = start + job["limits"]["wall_seconds"]
    chunks, size, status = [], 0, "ok"
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            status = "timeout"
            break
        ready, _, _ = select.select([read_fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(read_fd, 1 << 16)
        if not chunk:
            break
        size += len(chunk)
        if size > RESULT_CAP + 4:
            status = "oversize"
            break
        chunks.append(chunk)
        if size >= 4 and size >= 4 + struct.unpack(">I", b"".join(chunks)[:4])[0]:
            break  # the whole message is in; processes the child left behind may hold the pipe open
    os.close(read_fd)
    for target in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        try:
            target()
        except (ProcessLookupError, PermissionError):
            pass
    _, wait_status = os.waitpid(pid, 0)
    log = ""
    try:
        with open(os.path.join(tmpdir, "output.txt"), "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - LOG_TAIL))
            log = f.read().decode("utf-8", "replace")
    except OSError:
        pass
    shutil.rmtree(tmpdir, ignore_errors=True)
    reply = {"status": status, "seconds": time.monotonic() - start, "log": log, "result": None}
    data = b"".join(chunks)
    if status == "timeout":
        reply["error"] = f"wall-clock deadline of {job['limits']['wall_seconds']} s passed: killed"
    elif status == "oversize":
        reply["error"] = f"result larger than {RESULT_CAP} bytes: killed"
    else:
        if len(data) < 4 or struct.unpack(">I", data[:4])[0] != len(data) - 4:
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
    return {"pidns": pidns if pidns.available else None, "landlock": confine.landlock_abi(),
            # pid_max is per PID namespace only from Linux 6.14; before, writing it would change the
            # whole machine's, so it is never touched there.
            "pid_max": pidns.available and kernel_at_least(6, 14)}


def can_drop_uid(runner, base_dir: str, caps: dict) -> bool:
    """Whether children can run as ``nobody``: root, and the runner works without root's files
    (a Python installed under a private home, e.g. /root/.pyenv, cannot be read by nobody)."""
    if os.getuid() != 0:
        return False
    probe = {"code": getattr(runner, "PROBE_CODE", "pass"),
             "limits": {"wall_seconds": 30, "cpu_seconds": 30, "memory_bytes": 4 << 30,
                        "file_bytes": 16 << 20, "open_files": 64, "processes": 16}}
    reply = run_job(runner, probe, base_dir, True, caps)
    return reply["status"] == "ok" and reply["result"]["ok"]


def main() -> None:
    runner = importlib.import_module(sys.argv[1])
    runner.prepare()
    network = isolate_network()
    base_dir = tempfile.mkdtemp(prefix="mmpost-sandbox-")
    os.chmod(base_dir, 0o711)
    caps = capabilities()
    drop_uid = "userns" not in network and can_drop_uid(runner, base_dir, caps)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    write_message(stdout, {"ready": True, "network": network, "drop_uid": drop_uid, "pid": os.getpid(),
                           "pidns": bool(caps["pidns"]), "landlock": caps["landlock"], "pid_max": caps["pid_max"]})
    try:
        while (job := read_message(stdin)) is not None:
            write_message(stdout, run_job(runner, job, base_dir, drop_uid, caps))
    finally:
        shutil.rmtree(base_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
