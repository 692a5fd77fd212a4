"""Persistent call cache: a resumed or repeated run replays answers instead of paying for them.

SQLite in WAL mode, one connection per thread (a connection must not be shared across
threads), a busy timeout so several threads or processes can write. The key covers everything
that changes an answer (provider, model, messages, max_tokens, temperature, sample index) and
nothing that does not: the base URL and the API key are deliberately absent, so the file holds
no secret and moving a server does not invalidate replays.

The cache is a copy, not the record: every paid reply is also in the ledger, so a damaged cache
file is moved aside and `fill` rebuilds it from the ledger. Errors of the file (not a database,
a full disk) surface as one line naming the file and the fix.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from exectune_jax.api.providers import Completion
from exectune_jax.errors import UserError
from exectune_jax.io import DiskFull

_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    text TEXT NOT NULL,
    stop_reason TEXT,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    created REAL NOT NULL
)
"""


def cache_key(provider: str, model: str, messages: Sequence[Mapping[str, str]], *, max_tokens: int,
              temperature: float, sample_index: int) -> str:
    """A stable hash of one call's answer-determining inputs."""
    payload = {
        "provider": provider, "model": model,
        "messages": [[m["role"], m["content"]] for m in messages],
        "max_tokens": int(max_tokens), "temperature": float(temperature),
        "sample_index": int(sample_index),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class DamagedCache(UserError):
    """The call cache file cannot be read as a database."""


@contextmanager
def _file_errors(path: Path):
    """sqlite's errors about the file itself, as one line each with the way out."""
    try:
        yield
    except sqlite3.OperationalError as e:
        if "disk is full" in str(e) or "disk I/O error" in str(e):
            raise DiskFull(f"{path}: no space left on the device while writing it; free some "
                           "space and run the same command again (paid replies are kept in the "
                           "ledger: nothing is paid twice)") from None
        raise
    except sqlite3.DatabaseError as e:
        raise DamagedCache(f"{path} is damaged ({e}); move it aside (e.g. `mv {path} "
                           f"{path}.bad`) and run again: it is rebuilt from the ledger, and no "
                           "call the ledger records as paid is paid again") from None


class Cache:
    """key -> Completion, durable across processes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._closed = False
        with _file_errors(self.path):
            self._conn().execute(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise RuntimeError(f"cache {self.path} is closed")
            conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def get(self, key: str) -> Completion | None:
        with _file_errors(self.path):
            row = self._conn().execute(
                "SELECT text, stop_reason, input_tokens, output_tokens FROM calls WHERE key = ?",
                (key,)).fetchone()
        return Completion(*row) if row else None

    def put(self, key: str, model: str, completion: Completion) -> None:
        with _file_errors(self.path):
            self._conn().execute(
                "INSERT OR REPLACE INTO calls VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key, model, completion.text, completion.stop_reason, completion.input_tokens,
                 completion.output_tokens, time.time()),
            )

    def fill(self, rows: Iterable[Mapping]) -> int:
        """Insert the ledger's paid replies (key, model, text, stop_reason, input_tokens,
        output_tokens) this cache lacks; returns how many were missing."""
        with _file_errors(self.path):
            conn = self._conn()
            before = conn.total_changes
            conn.executemany("INSERT OR IGNORE INTO calls VALUES (?, ?, ?, ?, ?, ?, ?)",
                             ((r["key"], r["model"], r["text"], r["stop_reason"], r["input_tokens"],
                               r["output_tokens"], time.time()) for r in rows))
            return conn.total_changes - before

    def __len__(self) -> int:
        with _file_errors(self.path):
            return self._conn().execute("SELECT COUNT(*) FROM calls").fetchone()[0]

    def checkpoint(self) -> None:
        """Fold the write-ahead log into the main file (e.g. before copying the run directory)."""
        with _file_errors(self.path):
            self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
            self._closed = True
        for conn in connections:
            conn.close()

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
