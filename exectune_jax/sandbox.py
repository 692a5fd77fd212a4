"""Run untrusted generated code in a contained child process.

Generated code is judged by running it, so it must not be able to hurt the host, see its
secrets, reach the network or outlive its time. The containment is layered so that losing
one layer (an unprivileged user, a kernel without namespaces) does not open the box:

- kernel: new mount, network, PID and IPC namespaces where the OS permits (directly as root,
  in a new user namespace otherwise). In the mount namespace the scratch directory, /tmp,
  /var/tmp and /dev/shm are fresh size-capped tmpfs, and the home directory (where tokens
  and credentials live) is an empty one; each holds only the import directories (the Python
  installation, a venv) that lived under it, bound back read-only. Started as root, the code
  runs as user `nobody` with no capabilities;
- rlimits: address space, CPU seconds, file size, process count, open files, no core dumps;
- a wall-clock timeout, then SIGKILL to the whole process group (with a PID namespace, to
  every descendant, even one that started its own session);
- a fresh scratch directory as cwd, HOME and TMPDIR, removed afterwards;
- an environment built from nothing (PATH, LANG, the scratch paths), never the parent's;
- inside the child, a Python audit hook that refuses sockets, name lookups, program
  execution, writes outside the scratch directory, reads of other processes' /proc entries
  and (where no mount namespace hid it) of the home directory. It is the whole barrier when
  no namespace is available, and native code (ctypes) can bypass it; `namespaces()` and
  `network_isolated()` say which case applies on this host.

A check passes when the code runs to its end. Leaving early (sys.exit, os._exit) is a
failure, so a program cannot skip the tests appended to it. Code that shares a process with
its tests can still subvert them (e.g. an `__eq__` that always returns True); that is beyond
what a sandbox can judge.

The child's side lives in `sandbox_child`, which imports only a few standard modules.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from exectune_jax import sandbox_child
from exectune_jax.sandbox_child import NOBODY, PROGRAM, SandboxViolation, reason_for

MIN_PATH = "/usr/local/bin:/usr/bin:/bin"
_NAMESPACE_KINDS = ("net", "pid", "user", "mount")
CHILD = sandbox_child.__file__


class SandboxError(RuntimeError):
    """The sandbox itself could not be set up: a fault of the host, never of the code."""


@dataclass(frozen=True)
class SandboxResult:
    """What one run did. `reason` is "ok" when `passed`, else a named failure:
    "timeout", "memory", "assertion", "exception: <Type>: <message>", "file_size",
    "disk_full", "process_limit", "network_blocked", "filesystem_blocked", "exec_blocked",
    "syntax_error", "early_exit", "killed: <SIGNAL>". A sandbox that cannot be set up raises
    `SandboxError` instead: that is never the code's failure."""

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
    max_processes: int = 16  # processes and threads beyond those the sandbox user already has
    open_files: int = 256
    output_limit: int = 64 * 1024  # characters of stdout and of stderr kept in the result
    scratch_mb: int = 64  # size of each private tmpfs (scratch, /tmp, ...) where mounts are possible

    def __post_init__(self) -> None:
        for name in ("timeout_s", "memory_mb", "file_size_mb", "max_processes", "open_files", "output_limit",
                     "scratch_mb"):
            value = getattr(self, name)
            whole = name != "timeout_s"
            if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)) or value <= 0:
                kind = "a positive whole number" if whole else "a positive number"
                raise ValueError(f"sandbox limit {name} must be {kind}, got {value!r}")


def run(
    code: str,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 512,
    files: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    namespaces: bool = True,
    **limits: float,
) -> SandboxResult:
    """Run `code` as a Python program in a fresh sandbox and report how it ended.

    `files` are extra files written into the scratch directory first (relative names, e.g. a
    module the program imports). `env` adds variables to the minimal environment; nothing is
    ever inherited from this process. `namespaces=False` skips the kernel namespaces (rlimits,
    the switch to `nobody` and the audit hook remain), for hosts where they misbehave.
    Further keyword arguments are `Limits` fields.
    """
    lim = Limits(timeout_s=timeout_s, memory_mb=memory_mb, **limits)
    started = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="exectune-sandbox-"))
    try:
        work = _prepare_scratch(base, code, files or {})
        return _run_in(base, work, lim, env or {}, namespaces, started)
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


def namespaces() -> dict[str, bool]:
    """Which namespaces a sandbox gets here: {"net", "pid", "user", "mount"} (probed once, in a child)."""
    return dict(_probe())


@lru_cache(maxsize=1)
def _probe() -> tuple[tuple[str, bool], ...]:
    probe = subprocess.run(
        [sys.executable, "-I", "-S", "-B", CHILD, "--probe"],
        capture_output=True,
        text=True,
        env={"PATH": MIN_PATH},
        timeout=30,
        start_new_session=True,
    )
    try:
        found = json.loads(probe.stdout)
        return tuple((key, bool(found[key])) for key in _NAMESPACE_KINDS)
    except (ValueError, KeyError, TypeError):
        return tuple((key, False) for key in _NAMESPACE_KINDS)


def _prepare_scratch(base: Path, code: str, files: Mapping[str, str]) -> Path:
    work = base / "work"
    work.mkdir()
    for name, text in {**files, PROGRAM: code}.items():
        target = (work / name).resolve()
        if work.resolve() not in target.parents:
            raise ValueError(f"sandbox file name {name!r} must be a relative path inside the scratch directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8", errors="surrogatepass")  # the child then reports syntax_error
    if os.geteuid() == 0:
        base.chmod(0o711)  # nobody may pass through to work/, not list or write base/
        for path in [work, *work.rglob("*")]:
            os.chown(path, NOBODY, NOBODY)
    return work


def _run_in(base: Path, work: Path, lim: Limits, extra_env: Mapping[str, str], use_namespaces: bool,
            started: float) -> SandboxResult:
    nonce = secrets.token_hex(16)
    config = {
        "work": str(work),
        "nonce": nonce,
        "memory_mb": lim.memory_mb,
        "cpu_s": int(lim.timeout_s) + 1,
        "file_size_mb": lim.file_size_mb,
        "max_processes": lim.max_processes,
        "open_files": lim.open_files,
        "packages": _package_dirs(),
        "scratch_mb": lim.scratch_mb,
        "namespaces": use_namespaces,
    }
    read_fd, write_fd = os.pipe()
    config["result_fd"] = write_fd
    with tempfile.TemporaryFile(dir=base) as out, tempfile.TemporaryFile(dir=base) as err:
        try:
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-B", CHILD],
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
    if reason.startswith("sandbox_error"):
        raise SandboxError(
            f"{reason.removeprefix('sandbox_error: ')}; the code did not run. "
            "Where kernel namespaces misbehave, run the sandbox with namespaces=False"
        )
    net = record.get("net") if record else None
    return SandboxResult(
        passed=reason == "ok",
        reason=reason,
        returncode=proc.returncode,
        stdout=stdout,
        stderr=stderr,
        seconds=time.monotonic() - started,
        network_isolated=bool(net) if net is not None else use_namespaces and network_isolated(),
        truncated=cut_out or cut_err,
        detail=(record or {}).get("detail", ""),
    )


@lru_cache(maxsize=1)
def _package_dirs() -> list[str]:
    """Where installed packages live. The child starts without `site` (faster, and no .pth
    hooks run), so it gets these directories on its path instead."""
    paths = sysconfig.get_paths()
    return list(dict.fromkeys(p for p in (paths["purelib"], paths["platlib"]) if os.path.isdir(p)))


def _child_env(work: Path, extra: Mapping[str, str]) -> dict[str, str]:
    single_thread = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    return {"PATH": MIN_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": str(work), "TMPDIR": str(work),
            **single_thread, **extra}


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


__all__ = ["Limits", "SandboxError", "SandboxResult", "SandboxViolation", "namespaces", "network_isolated", "reason_for", "run", "run_many"]
