"""Kernel confinement for sandbox children: Landlock, a private PID namespace, no capabilities.

Everything here is plain syscalls through ``ctypes`` (the zygote must not import torch and we
add no dependency). Each layer is used when the kernel offers it and reported otherwise, so the
sandbox says what it could and could not do on a given machine (``Sandbox.capabilities``).

- **Landlock** (Linux >= 5.13, unprivileged): the child may read only the interpreter's standard
  library and site-packages, the system libraries and a few files matplotlib needs (never the
  trainer's working directory, HOME or MMPOST_HOME), may write only inside its job
  directory, may execute nothing (no ``os.system`` / ``subprocess``), and (ABI >= 4) may not
  bind or connect TCP sockets; (ABI >= 6) may not signal processes outside its own sandbox.
  See https://docs.kernel.org/userspace-api/landlock.html for the ABI used below.
- **PID namespace**: the child is process 1 of a fresh namespace, so it cannot see or name any
  other process, and killing it kills everything it spawned (fork bombs, detached daemons).
- **pids cgroup** (where this process may create cgroups): a job has at most ``processes``
  processes at once, and every one of them is killed when the job ends.
- **IPC namespace**: each child gets its own, so SysV shared memory, semaphores and message queues
  cannot carry state from one job to the next (files cannot either: Landlock allows no writes
  outside the job directory, so ``/tmp`` and ``/dev/shm`` are closed to it).
- **Capabilities**: dropped from every set, with ``no_new_privs``, so a root-owned zygote does
  not lend root powers (mknod, mount, raw sockets, ignoring rlimits) to untrusted code.
"""

from __future__ import annotations

import ctypes
import os
import site
import struct
import sysconfig

_libc = ctypes.CDLL(None, use_errno=True)

SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_REMOVE_DIR, FS_REMOVE_FILE, FS_MAKE_CHAR, FS_MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
FS_MAKE_REG, FS_MAKE_SOCK, FS_MAKE_FIFO, FS_MAKE_BLOCK, FS_MAKE_SYM = 1 << 8, 1 << 9, 1 << 10, 1 << 11, 1 << 12
FS_REFER, FS_TRUNCATE, FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1
PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP = 38, 24
CLONE_NEWPID = 0x20000000
CLONE_NEWIPC = 0x08000000
CAP_LAST = 63  # PR_CAPBSET_DROP of an unknown capability fails harmlessly

# Files and folders a chart program may read besides the Python installation (shared libraries,
# fonts, time zone). Nothing under a home directory, /proc or /etc as a whole.
SYSTEM_READ = ("/usr", "/lib", "/lib64", "/lib32", "/etc/ld.so.cache", "/etc/fonts", "/etc/localtime",
               "/usr/share/zoneinfo", "/dev/urandom", "/dev/zero")


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 when Landlock is unavailable."""
    version = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0),
                            ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION))
    return max(0, version)


def _fs_rights(abi: int) -> int:
    rights = (1 << 13) - 1
    if abi >= 2:
        rights |= FS_REFER
    if abi >= 3:
        rights |= FS_TRUNCATE
    if abi >= 5:
        rights |= FS_IOCTL_DEV
    return rights


def _add_path(ruleset: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # absent on this machine: nothing to allow
    try:
        if not os.path.isdir(path):  # rules on files take only file rights
            rights &= FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
        attr = ctypes.create_string_buffer(struct.pack("<Qi", rights, fd), 12)
        if _libc.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH, attr, 0) != 0:
            raise OSError(ctypes.get_errno(), f"landlock_add_rule({path}): {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)


def readable_roots(private: list[str], extra: tuple[str, ...] = ()) -> list[str]:
    """What a child may read: the interpreter's standard library and its site-packages (where the
    modules a chart program imports live), system libraries and fonts. Never ``sys.path`` as a
    whole: it holds the trainer's working directory and script folder, and with them its run
    directories. A root that contains one of the ``private`` folders (the trainer's working
    directory, HOME, MMPOST_HOME) is left out."""
    paths = sysconfig.get_paths()
    roots = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    roots.update(site.getsitepackages())
    if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
        roots.add(site.getusersitepackages())
    roots.update((*SYSTEM_READ, *extra))
    private = [os.path.realpath(p) for p in private if p]
    return sorted(root for root in roots if os.path.exists(root)
                  if not any(_within(p, os.path.realpath(root)) for p in private))


def _within(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or below it."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def new_ipc_namespace() -> None:
    """Move this process into a fresh IPC namespace: SysV shared memory, semaphores and message
    queues (and POSIX message queues) it creates are invisible to every other job and vanish with it."""
    if _libc.unshare(CLONE_NEWIPC) != 0:
        raise OSError(ctypes.get_errno(), f"unshare(CLONE_NEWIPC): {os.strerror(ctypes.get_errno())}")


def ipc_namespaces_available() -> bool:
    """Whether this process may give each child its own IPC namespace (tried in a throwaway fork)."""
    pid = os.fork()
    if pid == 0:
        os._exit(0 if _libc.unshare(CLONE_NEWIPC) == 0 else 1)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def landlock(read: list[str], write: list[str], abi: int) -> None:
    """Restrict this process (and its future children) to reading ``read`` and writing
    ``write``; no execution, no TCP, no signals or abstract sockets outside the sandbox (as far
    as the kernel's ABI goes). Irreversible."""
    fs = _fs_rights(abi)
    fields = [fs]
    if abi >= 4:
        fields.append(NET_BIND_TCP | NET_CONNECT_TCP)  # handled with no rule: every bind/connect denied
    if abi >= 6:
        fields.append(SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL)
    attr = ctypes.create_string_buffer(struct.pack(f"<{len(fields)}Q", *fields), 8 * len(fields))
    ruleset = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, attr, ctypes.c_size_t(8 * len(fields)), 0)
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), f"landlock_create_ruleset: {os.strerror(ctypes.get_errno())}")
    try:
        for path in read:
            _add_path(ruleset, path, FS_READ_FILE | FS_READ_DIR)
        # No device nodes, sockets or fifos even in the job directory: a root child could
        # otherwise mknod the disk's block device there and open it.
        workspace = fs & ~(FS_EXECUTE | FS_MAKE_CHAR | FS_MAKE_BLOCK | FS_MAKE_SOCK | FS_MAKE_FIFO | FS_IOCTL_DEV)
        for path in write:
            _add_path(ruleset, path, workspace)
        _add_path(ruleset, "/dev/null", FS_READ_FILE | FS_WRITE_FILE | (FS_TRUNCATE if abi >= 3 else 0))
        if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        if _libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0) != 0:
            raise OSError(ctypes.get_errno(), f"landlock_restrict_self: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(ruleset)


def drop_capabilities() -> None:
    """Empty the bounding, effective, permitted and inheritable capability sets (with no_new_privs,
    an exec cannot regain them)."""
    _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    for cap in range(CAP_LAST + 1):
        _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    header = ctypes.create_string_buffer(struct.pack("<Ii", 0x20080522, 0), 8)  # _LINUX_CAPABILITY_VERSION_3
    data = ctypes.create_string_buffer(b"\0" * 24, 24)
    if _libc.capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), f"capset: {os.strerror(ctypes.get_errno())}")


class PidNamespaces:
    """Fork each job as process 1 of a fresh PID namespace, when the kernel lets this process.

    ``unshare(CLONE_NEWPID)`` only affects the next child, and can be repeated after ``setns``
    back to our own namespace, so every job gets its own.
    """

    def __init__(self):
        self.own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        self.available = self._unshare() and self._restore()

    def _unshare(self) -> bool:
        return _libc.unshare(CLONE_NEWPID) == 0

    def _restore(self) -> bool:
        return _libc.setns(self.own, CLONE_NEWPID) == 0

    def fork(self) -> int:
        """``os.fork()``, the child in a new PID namespace when available."""
        if not self.available:
            return os.fork()
        self._unshare()
        pid = os.fork()
        if pid != 0:
            self._restore()
        return pid


def limit_pids(count: int) -> bool:
    """In a new PID namespace's first process: cap the namespace at ``count`` PIDs (Linux >= 6.14
    makes ``pid_max`` per namespace; the kernel's floor is 301). False where not possible."""
    try:
        with open("/proc/sys/kernel/pid_max", "w") as f:
            f.write(str(max(301, count)))
        return True
    except OSError:
        return False


class PidsCgroup:
    """A ``pids`` cgroup per job, capping how many processes a job may have at once (a fork bomb
    stops at ``processes``) and letting the zygote kill every one of them. Used where this process
    may create cgroups (root with cgroup v1's ``pids`` hierarchy, or a cgroup v2 subtree with the
    ``pids`` controller delegated); ``available`` says whether it is."""

    def __init__(self, name: str):
        self.root = None
        self.pending: list[str] = []
        base = self._find_base()
        if base:
            try:
                path = os.path.join(base, name)
                os.makedirs(path, exist_ok=True)
                self.root = path
            except OSError:
                pass
        self.available = self.root is not None

    @staticmethod
    def _find_base() -> str | None:
        try:
            with open("/proc/self/cgroup") as f:
                memberships = [line.strip().split(":", 2) for line in f if line.strip()]
            with open("/proc/self/mountinfo") as f:
                mounts = [line.split() for line in f]
        except OSError:
            return None
        for _, controllers, path in memberships:
            for fields in mounts:
                sep = fields.index("-")
                fstype, options = fields[sep + 1], fields[-1].split(",")
                point = fields[4]
                if controllers == "pids" and fstype == "cgroup" and "pids" in options:
                    candidate = point + path
                elif controllers == "" and fstype == "cgroup2":
                    candidate = point + path
                    try:
                        with open(os.path.join(candidate, "cgroup.subtree_control")) as f:
                            if "pids" not in f.read().split():
                                continue
                    except OSError:
                        continue
                else:
                    continue
                if os.access(candidate, os.W_OK):
                    return candidate
        return None

    def create(self, job: str, processes: int) -> str | None:
        """A fresh cgroup for ``job`` allowing ``processes`` processes; None when unavailable."""
        if not self.available:
            return None
        path = os.path.join(self.root, job)
        try:
            os.mkdir(path)
            with open(os.path.join(path, "pids.max"), "w") as f:
                f.write(str(processes))
        except OSError:
            return None
        return path

    @staticmethod
    def enter(path: str) -> None:
        """Move the calling process into ``path`` (in the child, before it is confined)."""
        with open(os.path.join(path, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))  # read in the writer's PID namespace

    @staticmethod
    def kill_and_remove(path: str) -> bool:
        """SIGKILL every process left in ``path`` and try to remove it (it empties as the kernel
        reaps them); whether it is gone."""
        import signal

        try:
            with open(os.path.join(path, "cgroup.procs")) as f:
                pids = [int(p) for p in f.read().split()]
        except OSError:
            return True
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            os.rmdir(path)
            return True
        except OSError:
            return False

    def release(self, path: str) -> None:
        """End a job's cgroup now, or on a later :meth:`sweep` if its processes are still dying
        (never blocking the zygote's loop)."""
        if not self.kill_and_remove(path):
            self.pending.append(path)

    def sweep(self) -> None:
        self.pending = [p for p in self.pending if not self.kill_and_remove(p)]

    def close(self, wait: float = 2.0) -> None:
        import time

        end = time.monotonic() + wait
        while self.pending and time.monotonic() < end:
            self.sweep()
            time.sleep(0.01)
        if self.root:
            try:
                os.rmdir(self.root)
            except OSError:
                pass
