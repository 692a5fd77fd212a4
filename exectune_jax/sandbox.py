"""Run untrusted generated code in a contained child process.

Generated code is judged by running it, so it must not be able to hurt the host, see its
secrets, reach the network or outlive its time. The containment is layered so that losing
one layer (an unprivileged user, a kernel without namespaces) does not open the box:

- kernel: new network, PID and IPC namespaces where the OS permits (directly as root, or in a
  new user namespace otherwise); started as root, the code runs as user `nobody` without
  capabilities (see `_become_nobody`);
- rlimits: address space, CPU seconds, file size, process count, open files, no core dumps;
- a wall-clock timeout, then SIGKILL to the whole process group (with a PID namespace, to
  every descendant, even one that started its own session);
- a fresh scratch directory as cwd, HOME and TMPDIR, removed afterwards;
- an environment built from nothing (PATH, LANG, the scratch paths), never the parent's;
- inside the child, a Python audit hook that refuses sockets, name lookups, program
  execution, writes outside the scratch directory and reads of other processes' /proc
  entries. It is the whole network barrier when no namespace is available; native code
  (ctypes) can bypass it, which is why `network_isolated()` says which case applies.

A check passes when the code runs to its end. Leaving early (sys.exit, os._exit) is a
failure, so a program cannot skip the tests appended to it. Code that shares a process with
its tests can still subvert them (e.g. an `__eq__` that always returns True); that is beyond
what a sandbox can judge.

This file is also the child's entry point (`python -I -B sandbox.py`), so it imports only
the standard library.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

NOBODY = 65534
PROGRAM = "main.py"
MIN_PATH = "/usr/local/bin:/usr/bin:/bin"

_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
_PR_SET_PDEATHSIG = 1
_PR_SET_KEEPCAPS = 8
_CAPABILITY_VERSION_3 = 0x20080522
_CAP_DAC_READ_SEARCH = 2
_PR_SET_NO_NEW_PRIVS = 38


@dataclass(frozen=True)
class SandboxResult:
    """What one run did. `reason` is "ok" when `passed`, else a named failure:
    "timeout", "memory", "assertion", "exception: <Type>: <message>", "file_size",
    "process_limit", "network_blocked", "filesystem_blocked", "exec_blocked",
    "syntax_error", "early_exit", "killed: <SIGNAL>", "sandbox_error: <why>"."""

    passed: bool
    reason: str
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    network_isolated: bool  # True when a network namespace, not only the audit hook, kept it offline
    truncated: bool = False  # stdout or stderr was cut at the output limit
    detail: str = ""  # the failing exception's type and message, when there was one


@dataclass(frozen=True)
class Limits:
    """Resource limits of one run; every field is a hard cap on the child and its descendants."""

    timeout_s: float = 10.0  # wall clock, start to kill
    memory_mb: int = 512  # address space per process
    file_size_mb: int = 16  # largest file the code may write (stdout/stderr included)
    max_processes: int = 32  # processes and threads beyond those the sandbox user already has
    open_files: int = 256
    output_limit: int = 64 * 1024  # characters of stdout and of stderr kept in the result

    def __post_init__(self) -> None:
        for name in ("timeout_s", "memory_mb", "file_size_mb", "max_processes", "open_files", "output_limit"):
            if not getattr(self, name) > 0:
                raise ValueError(f"sandbox limit {name} must be positive, got {getattr(self, name)!r}")


def run(
    code: str,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 512,
    files: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    **limits: float,
) -> SandboxResult:
    """Run `code` as a Python program in a fresh sandbox and report how it ended.

    `files` are extra files written into the scratch directory first (relative names, e.g. a
    module the program imports). `env` adds variables to the minimal environment; nothing is
    ever inherited from this process. Further keyword arguments are `Limits` fields.
    """
    lim = Limits(timeout_s=timeout_s, memory_mb=memory_mb, **limits)
    started = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="exectune-sandbox-"))
    try:
        work = _prepare_scratch(base, code, files or {})
        return _run_in(base, work, lim, env or {}, started)
    finally:
        _remove_tree(base)


def run_many(codes: Sequence[str], *, workers: int | None = None, **options) -> list[SandboxResult]:
    """`run` each program, several at once; results keep the order of `codes`.

    Threads suffice: each one only waits on its child process.
    """
    workers = workers or os.cpu_count() or 2
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as pool:
        return list(pool.map(lambda code: run(code, **options), codes))


def network_isolated() -> bool:
    """Whether sandboxed code gets its own network namespace here, not only the audit hook."""
    return namespaces()["net"]


@lru_cache(maxsize=1)
def namespaces() -> dict[str, bool]:
    """Which namespaces a sandbox gets here: {"net", "pid", "user"} (probed once, in a child)."""
    probe = subprocess.run(
        [sys.executable, "-I", "-B", __file__, "--probe"],
        capture_output=True,
        text=True,
        env={"PATH": MIN_PATH},
        timeout=30,
        start_new_session=True,
    )
    try:
        found = json.loads(probe.stdout)
        return {key: bool(found[key]) for key in ("net", "pid", "user")}
    except (ValueError, KeyError, TypeError):
        return {"net": False, "pid": False, "user": False}


# ----------------------------------------------------------------------------------------
# host side


def _prepare_scratch(base: Path, code: str, files: Mapping[str, str]) -> Path:
    work = base / "work"
    work.mkdir()
    for name, text in {**files, PROGRAM: code}.items():
        target = (work / name).resolve()
        if work.resolve() not in target.parents:
            raise ValueError(f"sandbox file name {name!r} must be a relative path inside the scratch directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    if os.geteuid() == 0:
        base.chmod(0o711)  # nobody may pass through to work/, not list or write base/
        for path in [work, *work.rglob("*")]:
            os.chown(path, NOBODY, NOBODY)
    return work


def _run_in(base: Path, work: Path, lim: Limits, extra_env: Mapping[str, str], started: float) -> SandboxResult:
    nonce = secrets.token_hex(16)
    config = {
        "work": str(work),
        "nonce": nonce,
        "memory_mb": lim.memory_mb,
        "cpu_s": int(lim.timeout_s) + 1,
        "file_size_mb": lim.file_size_mb,
        "max_processes": lim.max_processes,
        "open_files": lim.open_files,
    }
    read_fd, write_fd = os.pipe()
    config["result_fd"] = write_fd
    with tempfile.TemporaryFile(dir=base) as out, tempfile.TemporaryFile(dir=base) as err:
        try:
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-B", __file__],
                    stdin=subprocess.PIPE,
                    stdout=out,
                    stderr=err,
                    cwd=work,
                    env=_child_env(work, extra_env),
                    pass_fds=(write_fd,),
                    start_new_session=True,
                )
            finally:
                os.close(write_fd)
            try:
                proc.stdin.write(json.dumps(config).encode())
                proc.stdin.close()
            except BrokenPipeError:
                pass
            timed_out = _wait_then_kill_group(proc, lim.timeout_s)
            record = _read_record(read_fd, nonce)
        finally:
            os.close(read_fd)
        stdout, cut_out = _read_capped(out, lim.output_limit)
        stderr, cut_err = _read_capped(err, lim.output_limit)
    reason = classify(timed_out, proc.returncode, record)
    net = record.get("net") if record else None
    return SandboxResult(
        passed=reason == "ok",
        reason=reason,
        returncode=proc.returncode,
        stdout=stdout,
        stderr=stderr,
        seconds=time.monotonic() - started,
        network_isolated=bool(net) if net is not None else network_isolated(),
        truncated=cut_out or cut_err,
        detail=(record or {}).get("detail", ""),
    )


def _child_env(work: Path, extra: Mapping[str, str]) -> dict[str, str]:
    return {"PATH": MIN_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": str(work), "TMPDIR": str(work), **extra}


def _wait_then_kill_group(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Wait for the child, then SIGKILL its process group; True if the wall clock ran out.

    The group is killed before the child is reaped: while it is a zombie its pid (and so the
    group id) cannot be reused by an unrelated process.
    """
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        pidfd = None
    if pidfd is None:
        try:
            proc.wait(timeout=timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
    else:
        try:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            timed_out = not poller.poll(max(1, int(timeout_s * 1000)))
        finally:
            os.close(pidfd)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    return timed_out


def _read_record(read_fd: int, nonce: str) -> dict | None:
    """The child's final report: the last line on the result pipe that carries our nonce."""
    os.set_blocking(read_fd, False)
    chunks, size = [], 0
    while size < 1 << 20:
        try:
            chunk = os.read(read_fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    record = None
    for line in b"".join(chunks).decode("utf-8", "replace").splitlines():
        try:
            candidate = json.loads(line)
        except ValueError:
            continue
        if isinstance(candidate, dict) and candidate.get("nonce") == nonce:
            record = candidate
    return record


def _read_capped(f, limit: int) -> tuple[str, bool]:
    f.seek(0)
    data = f.read(4 * limit + 4)
    text = data.decode("utf-8", "replace")
    return text[:limit], len(text) > limit


def _remove_tree(path: Path) -> None:
    """Remove the scratch tree even where the code took away permissions on its files."""

    def retry(func: Callable, target: str, _exc) -> None:
        try:
            os.chmod(os.path.dirname(target), 0o700)
            if os.path.isdir(target) and not os.path.islink(target):
                os.chmod(target, 0o700)
            func(target)
        except OSError:
            pass

    shutil.rmtree(path, onerror=retry)


_SIGNAL_REASONS = {signal.SIGXCPU: "timeout", signal.SIGXFSZ: "file_size"}


def classify(timed_out: bool, returncode: int | None, record: Mapping | None) -> str:
    """Name how a run ended from what the host saw; the child's own report wins when present."""
    if timed_out:
        return "timeout"
    if record is not None and isinstance(record.get("reason"), str):
        return record["reason"]
    sig = _signal_of(returncode)
    if sig is not None:
        return _SIGNAL_REASONS.get(sig, f"killed: {signal.Signals(sig).name}")
    return "early_exit"


def _signal_of(returncode: int | None) -> int | None:
    """A signal number from a return code: negative from Popen, 128+n relayed by the child."""
    if returncode is None:
        return None
    for candidate in (-returncode, returncode - 128):
        if candidate in signal.valid_signals() and candidate > 0:
            return candidate
    return None


# ----------------------------------------------------------------------------------------
# child side: everything below runs in the sandboxed interpreter


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
    spaces = _enter_namespaces()
    if spaces.get("error"):
        _report(config, {"reason": f"sandbox_error: {spaces['error']}"})
        os._exit(1)
    if spaces["pid"]:
        _fork_init()
    _run_program(config, spaces["net"])


def _enter_namespaces() -> dict:
    """Unshare network/PID/IPC namespaces, the strongest way this process is allowed to."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return {"net": False, "pid": False, "user": False}
    full = _CLONE_NEWNET | _CLONE_NEWPID | _CLONE_NEWIPC
    uid, gid = os.getuid(), os.getgid()
    for flags in (full, _CLONE_NEWUSER | full, _CLONE_NEWNET, _CLONE_NEWUSER | _CLONE_NEWNET):
        if libc.unshare(flags) != 0:
            continue
        if flags & _CLONE_NEWUSER:
            try:
                _map_ids(uid, gid)
            except OSError as e:
                return {"net": True, "pid": False, "user": True, "error": f"cannot map ids in user namespace ({e})"}
        return {"net": True, "pid": bool(flags & _CLONE_NEWPID), "user": bool(flags & _CLONE_NEWUSER)}
    return {"net": False, "pid": False, "user": False}


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


def _run_program(config: dict, net_isolated: bool) -> None:
    work = config["work"]
    os.chdir(work)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write raises EFBIG instead of killing
    uid = NOBODY if os.geteuid() == 0 else os.getuid()
    _set_limits(config, uid)
    if os.geteuid() == 0:
        _become_nobody()
    try:
        ctypes.CDLL(None).prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    me = os.getpid()
    violations: list[str] = []
    sys.addaudithook(_audit_hook(os.path.realpath(work), violations))
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


def _become_nobody() -> None:
    """Switch from root to `nobody`, with no capabilities but one where it is needed.

    When the interpreter lives where `nobody` cannot read (e.g. under /root), the code keeps
    CAP_DAC_READ_SEARCH so imports still work: it may read files, but not write root's
    files, signal or trace other users' processes, read their /proc environ, or escape
    RLIMIT_NPROC (root is exempt from that limit, `nobody` is not).
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
    except SyntaxError as e:
        _print_exception(e)
        return e
    except ValueError as e:  # e.g. a NUL byte in the source
        return SyntaxError(str(e))
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
    import traceback

    try:
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
    line = json.dumps({"nonce": config["nonce"], **fields}) + "\n"
    data = line.encode()
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
_PROC_PID = re.compile(r"^/proc/(\d+)(/|$)")


def _audit_hook(scratch: str, violations: list[str]) -> Callable[[str, tuple], None]:
    """Refuse sockets, exec, writes outside `scratch` and other processes' /proc entries."""
    own_proc = os.readlink("/proc/self")
    allowed_writes = (scratch + os.sep, os.devnull)

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
            if match and match.group(1) != own_proc:
                deny("filesystem_blocked", f"read of {path}")
            mode, flags = args[1], args[2]
            wants_write = bool(flags & _WRITE_FLAGS) or (isinstance(mode, str) and any(c in mode for c in "wax+"))
            if wants_write and not writable(path):
                deny("filesystem_blocked", f"write to {path}")
        elif event in _PATH_EVENTS:
            for path_at, fd_at in _PATH_EVENTS[event]:
                dir_fd = args[fd_at] if fd_at is not None and fd_at < len(args) else None
                path = resolve(args[path_at], dir_fd)
                if not writable(path):
                    deny("filesystem_blocked", f"{event} on {path}")

    return hook


if __name__ == "__main__":
    if sys.argv[1:] == ["--probe"]:
        print(json.dumps(_enter_namespaces()))
    else:
        _child_main()
