"""The child side of `exectune_jax.sandbox`: runs inside the sandboxed interpreter.

Started as `python -I -S -B sandbox_child.py` with its settings on stdin, it enters the
namespaces it may, sets up private mounts, forks a PID-namespace init when it got one, sets
the rlimits, drops root, installs the audit hook and runs the program, then reports how it
ended on a pipe the host reads. It imports only a few standard modules: every check pays for
its start-up.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import signal
import sys
from collections.abc import Callable

NOBODY = 65534
PROGRAM = "main.py"

_CLONE_NEWNS = 0x00020000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
_PR_SET_PDEATHSIG = 1
_PR_SET_KEEPCAPS = 8
_PR_SET_NO_NEW_PRIVS = 38
_CAPABILITY_VERSION_3 = 0x20080522
_CAP_DAC_READ_SEARCH = 2
_MS_RDONLY = 0x1
_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MS_REMOUNT = 0x20
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_PRIVATE = 0x40000
_MS_RELATIME = 0x200000
_MNT_DETACH = 2
_TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")


class SandboxViolation(PermissionError):
    """Raised inside the child when the code does something the sandbox forbids."""

    def __init__(self, kind: str, what: str):
        super().__init__(errno.EPERM, f"sandbox: {kind.replace('_', ' ')}: {what}")
        self.kind = kind


def reason_for(exc: BaseException) -> str:
    """Name the failure an exception stands for (pure; used in the child)."""
    if isinstance(exc, SandboxViolation):
        return exc.kind
    if isinstance(exc, SyntaxError):
        return "syntax_error"
    if isinstance(exc, MemoryError):
        return "memory"
    if isinstance(exc, AssertionError):
        return "assertion"
    if isinstance(exc, SystemExit):
        return "early_exit"
    if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
        return "file_size"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "disk_full"
    if isinstance(exc, BlockingIOError) and exc.errno == errno.EAGAIN:
        return "process_limit"
    if isinstance(exc, RuntimeError) and "can't start new thread" in str(exc):
        return "process_limit"
    message = " ".join(str(exc).split())[:200]
    return f"exception: {type(exc).__name__}: {message}" if message else f"exception: {type(exc).__name__}"


def _child_main() -> None:
    config = json.loads(sys.stdin.buffer.read())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    homes, keep = _homes(), _import_dirs(config["packages"])
    spaces = enter_namespaces() if config["namespaces"] else dict(_NO_NAMESPACES)
    if spaces.get("error"):
        _report(config, {"reason": f"sandbox_error: {spaces['error']}"})
        os._exit(1)
    if spaces["mount"]:
        try:
            homes = private_mounts(config, homes, keep)
        except OSError as e:
            _report(config, {"reason": f"sandbox_error: {e}"})
            os._exit(1)
    if spaces["pid"]:
        _fork_init()
    _run_program(config, spaces["net"], hidden=homes, keep=keep)


_NO_NAMESPACES = {"net": False, "pid": False, "user": False, "mount": False}


def enter_namespaces() -> dict:
    """Unshare mount/network/PID/IPC namespaces, the strongest way this process may."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return dict(_NO_NAMESPACES)
    full = _CLONE_NEWNS | _CLONE_NEWNET | _CLONE_NEWPID | _CLONE_NEWIPC
    uid, gid = os.getuid(), os.getgid()
    for flags in (full, _CLONE_NEWUSER | full, _CLONE_NEWNET, _CLONE_NEWUSER | _CLONE_NEWNET):
        if libc.unshare(flags) != 0:
            continue
        found = {
            "net": True,
            "pid": bool(flags & _CLONE_NEWPID),
            "user": bool(flags & _CLONE_NEWUSER),
            "mount": bool(flags & _CLONE_NEWNS),
        }
        if flags & _CLONE_NEWUSER:
            try:
                _map_ids(uid, gid)
            except OSError as e:
                return {**found, "error": f"cannot map ids in user namespace ({e})"}
        if found["mount"]:
            try:  # first, so that no mount made later can propagate back to the host
                _mounter()(None, "/", None, _MS_REC | _MS_PRIVATE)
            except OSError:
                found["mount"] = False  # e.g. a security module denies mounts: use no mounts at all
        return found
    return dict(_NO_NAMESPACES)


def _homes() -> list[str]:
    """Home directories to hide from the code: where credentials and tokens usually live."""
    import pwd

    homes = {"/root"} if os.getuid() == 0 else set()
    try:
        homes.add(pwd.getpwuid(os.getuid()).pw_dir)
    except KeyError:
        pass
    return sorted(h for h in homes if h not in ("", "/") and os.path.isdir(h))


def _import_dirs(packages: list[str]) -> list[str]:
    return sorted({os.path.realpath(p) for p in [*sys.path, *packages] if os.path.isdir(p)})


def private_mounts(config: dict, homes: list[str], keep: list[str]) -> list[str]:
    """In the new mount namespace: fresh size-capped tmpfs on /tmp, /var/tmp, /dev/shm, the home
    directories and the scratch directory, each holding only the import directories that
    lived under it (bind-mounted back read-only: a venv under /tmp still imports). Mounts are
    private (`enter_namespaces`), so nothing here is visible to the host. Each step is best
    effort; returns the homes still in view, for the audit hook to guard instead.
    """
    mount = _mounter()
    work = config["work"]
    files = _read_tree(work)
    options = f"size={config['scratch_mb']}m"
    for tmp in _TMP_DIRS:
        if os.path.isdir(tmp) and not os.path.islink(tmp) and not any(_within(tmp, d) for d in keep):
            _try(_cover, tmp, [d for d in keep if _within(d, tmp)], mount, f"{options},mode=1777")
    visible = [
        home for home in homes
        if any(_within(home, d) for d in keep)
        or not _try(_cover, home, [d for d in keep if _within(d, home)], mount, f"{options},mode=0755")
    ]
    if os.path.isdir(work):
        if not _try(mount, "tmpfs", work, "tmpfs", _MS_NOSUID | _MS_NODEV, f"{options},mode=0700"):
            return visible  # the scratch directory stays on disk, as the host made it
    else:  # it lived under a directory that is now a fresh tmpfs
        os.makedirs(work, mode=0o700)
    _write_tree(work, files, NOBODY if os.geteuid() == 0 else os.getuid())
    return visible


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def _try(step: Callable, *args) -> bool:
    try:
        step(*args)
    except OSError:
        return False
    return True


def _cover(directory: str, keep: list[str], mount: Callable, options: str) -> None:
    """Cover `directory` with an empty tmpfs, then bind the `keep` directories back in place,
    read-only. Each is held open first: the binds come from those handles, as the tmpfs hides
    the paths."""
    keep = [d for d in keep if not any(d != k and _within(d, k) for k in keep)]
    held = [os.open(d, os.O_PATH | os.O_DIRECTORY) for d in keep]
    try:
        mount("tmpfs", directory, "tmpfs", _MS_NOSUID | _MS_NODEV, options)
        try:
            for target, fd in zip(keep, held):
                os.makedirs(target, mode=0o755, exist_ok=True)
                mount(f"/proc/self/fd/{fd}", target, None, _MS_BIND | _MS_REC)
                _try(_read_only, target, mount)  # the audit hook refuses writes there as well
        except OSError:
            ctypes.CDLL(None).umount2(directory.encode(), _MNT_DETACH)  # back to visible, not broken
            raise
    finally:
        for fd in held:
            os.close(fd)


def _read_only(target: str, mount: Callable) -> None:
    """Remount a bind read-only, keeping the flags a user namespace may not clear."""
    found = os.statvfs(target).f_flag
    same = os.ST_NOSUID | os.ST_NODEV | os.ST_NOEXEC | os.ST_NOATIME | os.ST_NODIRATIME  # equal to the MS_ bits
    flags = _MS_REMOUNT | _MS_BIND | _MS_RDONLY | (found & same) | (_MS_RELATIME if found & os.ST_RELATIME else 0)
    mount(None, target, None, flags)


def _mounter() -> Callable:
    libc = ctypes.CDLL(None, use_errno=True)

    def mount(source, target, fstype, flags, data=None) -> None:
        args = [a.encode() if isinstance(a, str) else a for a in (source, target, fstype)]
        if libc.mount(*args, ctypes.c_ulong(flags), data.encode() if data else None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"cannot mount {fstype or 'bind'} on {target}: {os.strerror(err)}")

    return mount


def _read_tree(root: str) -> dict[str, bytes]:
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, root)] = f.read()
    return files


def _write_tree(root: str, files: dict[str, bytes], owner: int) -> None:
    os.chown(root, owner, owner)
    for rel, data in files.items():
        path = os.path.join(root, rel)
        folder = os.path.dirname(path)
        if not os.path.isdir(folder):
            os.makedirs(folder)
            os.chown(folder, owner, owner)
        with open(path, "wb") as f:
            f.write(data)
        os.chown(path, owner, owner)


def _map_ids(uid: int, gid: int) -> None:
    """Keep our own ids inside the new user namespace; root also maps `nobody` to drop to."""
    if uid == 0:
        steps = (("uid_map", f"0 0 1\n{NOBODY} {NOBODY} 1\n"), ("gid_map", f"0 0 1\n{NOBODY} {NOBODY} 1\n"))
    else:
        steps = (("uid_map", f"{uid} {uid} 1\n"), ("setgroups", "deny"), ("gid_map", f"{gid} {gid} 1\n"))
    for name, text in steps:
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def _fork_init() -> None:
    """Become: a relay (this process) -> PID-namespace init -> the program's process.

    The init only reaps; when the program's process ends it exits, and the kernel kills
    everything left in the namespace, daemons and session leaders included.
    """
    init = os.fork()
    if init:
        _, status = os.waitpid(init, 0)
        os._exit(_exit_code(status))
    _die_with_parent()
    program = os.fork()
    if program:
        while True:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                os._exit(1)
            if pid == program:
                os._exit(_exit_code(status))


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _run_program(config: dict, net_isolated: bool, hidden: list[str], keep: list[str]) -> None:
    """Limit, drop privileges, hook, run the program, report. `hidden` are homes still in
    view, so the audit hook refuses reads there (except in the `keep` import directories)."""
    work = config["work"]
    violations: list[str] = []
    try:
        os.chdir(work)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write raises EFBIG instead of killing
        sys.path.extend(config["packages"])
        _set_limits(config, NOBODY if os.geteuid() == 0 else os.getuid())
        if os.geteuid() == 0:
            become_nobody()
        ctypes.CDLL(None).prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        sys.addaudithook(_audit_hook(os.path.realpath(work), violations, hidden, keep))
    except Exception as e:  # noqa: BLE001 - never run the program half-contained
        _report(config, {"reason": f"sandbox_error: {type(e).__name__}: {e}"})
        os._exit(1)
    me = os.getpid()
    config["out_of_memory"] = (json.dumps({"nonce": config["nonce"], "reason": "memory", "net": net_isolated}) + "\n").encode()
    outcome = _execute(os.path.join(work, PROGRAM))
    if os.getpid() != me:  # a process the program forked reached the end: stay silent
        _flush_std()
        os._exit(0 if outcome is None else 1)
    reason = "ok" if outcome is None else reason_for(outcome)
    if violations:  # a breach names the run even when a library wrapped it or the program caught it
        reason = violations[0]
    detail = "" if outcome is None else f"{type(outcome).__name__}: {outcome}"[:500]
    if not _flush_std() and reason == "ok":
        reason = "file_size"
    _report(config, {"reason": reason, "detail": detail, "net": net_isolated})
    os._exit(0 if reason == "ok" else 1)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def become_nobody() -> None:
    """Switch from root to `nobody` (root is exempt from RLIMIT_NPROC, `nobody` is not) with
    no capabilities, but one where it is needed.

    When the interpreter lives where `nobody` cannot read (e.g. under /root) and no mount
    namespace bound it back into view, the code keeps CAP_DAC_READ_SEARCH so imports still
    work: it may read files, but not write root's files, signal or trace other users'
    processes, or read their /proc environ. The cap is lost on exec.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    import_dirs = [p for p in sys.path if os.path.isdir(p)]  # seen as root, before the switch
    os.setgroups([])
    libc.prctl(_PR_SET_KEEPCAPS, 1, 0, 0, 0)
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    readable = all(os.access(p, os.R_OK | os.X_OK) for p in import_dirs)
    keep = 0 if readable else 1 << _CAP_DAC_READ_SEARCH
    data = (_CapData * 2)()
    data[0].effective = data[0].permitted = keep
    if libc.capset(ctypes.byref(_CapHeader(_CAPABILITY_VERSION_3, 0)), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")
    libc.prctl(_PR_SET_KEEPCAPS, 0, 0, 0, 0)


def _set_limits(config: dict, uid: int) -> None:
    import resource

    mib = 1024 * 1024
    nproc = _tasks_of(uid) + config["max_processes"]
    for limit, value in (
        (resource.RLIMIT_AS, config["memory_mb"] * mib),
        (resource.RLIMIT_FSIZE, config["file_size_mb"] * mib),
        (resource.RLIMIT_NOFILE, config["open_files"]),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_NPROC, nproc),
    ):
        resource.setrlimit(limit, (value, value))
    resource.setrlimit(resource.RLIMIT_CPU, (config["cpu_s"], config["cpu_s"] + 1))


def _tasks_of(uid: int) -> int:
    """Threads the user already runs: RLIMIT_NPROC counts them all, per user, system-wide."""
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    count += len(os.listdir(f"/proc/{entry}/task"))
            except OSError:
                continue
    return count


def _execute(path: str) -> BaseException | None:
    """Run the program as `__main__`; return the exception that ended it, or None."""
    import types

    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
        code = compile(source, path, "exec")
    except ValueError as e:  # a NUL byte or invalid UTF-8 in the source
        return SyntaxError(str(e))
    except SystemError as e:  # the compiler lost an allocation without raising MemoryError
        _print_exception(e)
        return MemoryError(str(e))
    except BaseException as e:  # SyntaxError, or MemoryError under a tiny memory limit
        _print_exception(e)
        return e
    module = types.ModuleType("__main__")
    module.__file__ = path
    sys.modules["__main__"] = module
    sys.argv = [path]
    sys.path.insert(0, os.path.dirname(path))
    try:
        exec(code, module.__dict__)
    except BaseException as e:  # the program's failure is the result, whatever it is
        _print_exception(e)
        return e
    return None


def _print_exception(exc: BaseException) -> None:
    try:
        import traceback

        tb = exc.__traceback__.tb_next if exc.__traceback__ else None
        traceback.print_exception(type(exc), exc, tb, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - a failing print must not hide the verdict
        pass


def _flush_std() -> bool:
    ok = True
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001 - EFBIG or a closed stream
            ok = False
    return ok


def _report(config: dict, fields: dict) -> None:
    try:
        data = (json.dumps({"nonce": config["nonce"], **fields}) + "\n").encode()
    except MemoryError:  # the program left no room even for the report
        data = config["out_of_memory"]
    while data:
        try:
            data = data[os.write(config["result_fd"], data) :]
        except OSError:
            return


_NET_EVENTS = frozenset(
    {
        "socket.__new__",
        "socket.bind",
        "socket.connect",
        "socket.getaddrinfo",
        "socket.gethostbyname",
        "socket.gethostbyaddr",
        "socket.getnameinfo",
        "socket.sendto",
        "socket.sendmsg",
    }
)
_EXEC_EVENTS = frozenset({"os.exec", "os.posix_spawn", "os.spawn", "os.system", "subprocess.Popen", "pty.spawn"})
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_PATH_EVENTS = {  # event -> indices of (path, dir_fd) pairs in its arguments
    "os.remove": ((0, 1),),
    "os.rmdir": ((0, 1),),
    "os.mkdir": ((0, 2),),
    "os.rename": ((0, 2), (1, 3)),
    "os.link": ((0, 2), (1, 3)),
    "os.symlink": ((1, 2),),
    "os.chmod": ((0, 2),),
    "os.chown": ((0, 3),),
    "os.utime": ((0, 3),),
    "os.truncate": ((0, None),),
    "os.mkfifo": ((0, 2),),
    "os.mknod": ((0, 3),),
    "shutil.rmtree": ((0, 1),),
}
_LIST_EVENTS = frozenset({"os.listdir", "os.scandir"})
_PROC_PID = re.compile(r"^/proc/(\d+)(/|$)")


def _audit_hook(scratch: str, violations: list[str], hidden: list[str], keep: list[str]) -> Callable[[str, tuple], None]:
    """Refuse sockets, exec, writes outside `scratch`, other processes' /proc entries and reads
    in the `hidden` directories outside `keep`."""
    own_proc = os.readlink("/proc/self")
    allowed_writes = (scratch + os.sep, os.devnull)
    visible = [scratch, *keep]

    def under(path: str, roots: list[str]) -> bool:
        return any(path == root or path.startswith(root + os.sep) for root in roots)

    def secret(path: str | None) -> bool:
        return path is not None and under(path, hidden) and not under(path, visible)

    def deny(kind: str, what: str) -> None:
        violations.append(kind)
        raise SandboxViolation(kind, what)

    def resolve(path, dir_fd) -> str | None:
        if isinstance(path, int) or path is None:
            return None
        path = os.fsdecode(os.fspath(path))
        if not os.path.isabs(path) and isinstance(dir_fd, int) and dir_fd >= 0:
            path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
        return os.path.realpath(path)

    def writable(path: str | None) -> bool:
        return path is None or path == scratch or path.startswith(allowed_writes)

    def hook(event: str, args: tuple) -> None:
        if event in _NET_EVENTS:
            deny("network_blocked", event)
        elif event in _EXEC_EVENTS:
            deny("exec_blocked", event)
        elif event == "open":
            path = resolve(args[0], None)
            if path is None:
                return
            match = _PROC_PID.match(path)
            if match and match.group(1) != own_proc or secret(path):
                deny("filesystem_blocked", f"read of {path}")
            mode, flags = args[1], args[2]
            wants_write = bool(flags & _WRITE_FLAGS) or (isinstance(mode, str) and any(c in mode for c in "wax+"))
            if wants_write and not writable(path):
                deny("filesystem_blocked", f"write to {path}")
        elif event in _LIST_EVENTS:
            path = resolve(args[0] if args[0] is not None else ".", None)
            if secret(path):
                deny("filesystem_blocked", f"listing of {path}")
        elif event in _PATH_EVENTS:
            for path_at, fd_at in _PATH_EVENTS[event]:
                dir_fd = args[fd_at] if fd_at is not None and fd_at < len(args) else None
                path = resolve(args[path_at], dir_fd)
                if not writable(path):
                    deny("filesystem_blocked", f"{event} on {path}")

    return hook


if __name__ == "__main__":
    if sys.argv[1:] == ["--probe"]:
        print(json.dumps(enter_namespaces()))
    else:
        _child_main()
