"""Files under a run directory: whole-or-nothing writes, JSONL, and the run_dir lock.

Every file the package writes whole (datasets, summaries, results, totals) goes through
`write_text_atomic`: a temp file with a per-process unique name beside the target, fsynced, then
renamed over it, so a reader never sees half a file and two processes never share a temp name.
A failed write (a full disk above all) removes its temp file and raises `DiskFull` with one line
naming the file, so nothing half-written or stray is left behind.

`RunLock` is an OS file lock (`fcntl.flock`) on `run_dir/.lock`, held for a stage's life. The
kernel releases it when the process ends however it ends (SIGKILL included), so a stale lock
never blocks a resume; a second process on the same run_dir is refused with the holder's PID
and stage. The holder itself and the stage processes it starts (the demo's runner) join its
hold instead: they run the holder's stages, not a second run.
"""

from __future__ import annotations

import errno
import fcntl
import gzip
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from exectune_jax import layout
from exectune_jax.errors import UserError


class DiskFull(UserError):
    """A write failed for lack of space; the message names the file."""


class RunDirBusy(UserError):
    """Another live process holds the run directory."""


def _space_error(path: Path, e: OSError) -> UserError | None:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(f"{path}: no space left on the device while writing it; free some space "
                        "and run the same command again (finished API calls are cached and "
                        "recorded: nothing is paid twice)")
    return None


def temp_sibling(path: str | Path) -> Path:
    """The hidden name beside `path` that this process builds a file or directory under before
    renaming it into place: unique per process, so two writers never share one."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def remove_path(path: str | Path) -> None:
    """Delete a file, a link (not what it points at) or a directory tree, if there."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def swap_in_dir(tmp: Path, out: Path) -> Path | None:
    """Rename the finished directory `tmp` to `out`. An existing `out` is renamed aside first, to
    the path returned, for the caller to remove once the new one is in place: an interruption
    leaves `out` whole, the old one or the new."""
    if not (out.exists() or out.is_symlink()):
        os.rename(tmp, out)
        return None
    old = out.with_name(f".{out.name}.{os.getpid()}.old")
    remove_path(old)  # left by a killed process of the same id
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    return old


def claim_dir(tmp: Path, out: Path) -> bool:
    """Rename the finished directory `tmp` onto `out` unless another process has filled `out`
    meanwhile: then `tmp` is removed and False returned (the first finisher's stays)."""
    try:
        os.replace(tmp, out)
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not out.is_dir():
            raise
        remove_path(tmp)
        return False
    return True


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` to `path` whole or not at all (temp file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and (short := _space_error(path, e)) is not None:
            raise short from None
        raise


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path: str | Path, rows: Iterable[Mapping]) -> None:
    """A whole JSONL file or nothing: an interrupted run never leaves half a dataset behind."""
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def whole_lines(path: str | Path) -> str:
    """The file's text up to its last newline: a torn tail (a crash mid-append) is ignored."""
    data = Path(path).read_bytes()
    return data[: data.rfind(b"\n") + 1].decode("utf-8")


def cut_torn_tail(path: str | Path) -> None:
    """Truncate an append-only file after its last newline, so that the next append starts a
    whole line after a crash that tore the last one."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":  # the usual case: whole, and the file is not read again
            return
        f.seek(0)
        f.truncate(f.read().rfind(b"\n") + 1)


def read_jsonl(path: str | Path, *, appended: bool = True, error: type[Exception] = UserError,
               hint: str = "fix or remove that line") -> Iterator[tuple[int, Any]]:
    """(line number, parsed row) for each non-blank line of a JSONL file (gzip-compressed where
    its name ends in .gz). `appended`: a file the package appends to (a ledger, a log), whose torn
    last line (a crash mid-append) is not a row yet and is left out; otherwise (a dataset, a
    hand-off) the file is read to its end, a last line without a newline included. A line that
    is not JSON raises `error` with "FILE:LINE: not valid JSON (why); `hint`"."""
    path = Path(path)
    if appended and path.suffix != ".gz":
        lines: Iterable[str] = whole_lines(path).splitlines()
        yield from _parsed(path, lines, error, hint)
        return
    # a dataset may be large: streamed line by line
    with (gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")) as f:
        yield from _parsed(path, f, error, hint)


def _parsed(path: Path, lines: Iterable[str], error: type[Exception], hint: str) -> Iterator[tuple[int, Any]]:
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except ValueError as e:
            raise error(f"{path}:{lineno}: not valid JSON ({getattr(e, 'msg', e)}); {hint}") from None


def append_line(fd: int, path: Path, line: bytes) -> None:
    """One `write` on an O_APPEND descriptor: whole lines only. A short write (a full disk) is
    cut back so no torn line stays, and raises DiskFull."""
    try:
        written = os.write(fd, line)
    except OSError as e:
        if (short := _space_error(path, e)) is not None:
            raise short from None
        raise
    if written != len(line):
        os.ftruncate(fd, os.lseek(fd, 0, os.SEEK_END) - written)
        raise DiskFull(f"{path}: no space left on the device while appending to it; free some "
                       "space and run the same command again")


def append_jsonl(path: str | Path, row: Mapping) -> None:
    """Append one JSON row as one whole line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        append_line(fd, path, (json.dumps(row, ensure_ascii=False) + "\n").encode())
    finally:
        os.close(fd)


class RunLock:
    """Exclusive hold of a run directory for one stage; `with RunLock(run_dir, "sample"):`."""

    def __init__(self, run_dir: str | Path, stage: str):
        self.path = layout.lock(run_dir)
        self.stage = stage
        self._fd = -1

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            if holder_pid(holder) in (os.getpid(), os.getppid()):
                return self
            raise RunDirBusy(f"{self.path.parent}: in use by {holder}; wait for it to finish "
                             "or use another run_dir (two stages on one run_dir would pay "
                             "for the same calls twice)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} (exectune {self.stage})".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd < 0:  # joined another's hold: it is the holder's to release
            return
        # an emptied file names no holder, so no later process mistakes this one's PID for its own
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = -1


def holder_pid(holder: str) -> int | None:
    """The PID in a lock file's "pid N (exectune STAGE)", or None."""
    words = holder.split()
    if len(words) >= 2 and words[0] == "pid" and words[1].isdigit():
        return int(words[1])
    return None
