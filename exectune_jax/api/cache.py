"""Persistent call cache: a resumed or repeated run replays answers instead of paying for them.

SQLite in WAL mode, one connection per thread (a connection must not be shared across
threads), a busy timeout so several threads or processes can write. The key covers everything
that changes an answer (provider, model, messages, max_tokens, temperature, sample index) and
nothing that does not: the base URL and the API key are deliberately absent, so the file holds
no secret and moving a server does not invalidate replays.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from exectune_jax.api.providers import Completion

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


class Cache:
    """key -> Completion, durable across processes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._closed = False
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
        row = self._conn().execute(
            "SELECT text, stop_reason, input_tokens, output_tokens FROM calls WHERE key = ?", (key,)
        ).fetchone()
        return Completion(*row) if row else None

    def put(self, key: str, model: str, completion: Completion) -> None:
        self._conn().execute(
            "INSERT OR REPLACE INTO calls VALUES (?, ?, ?, ?, ?, ?, ?)",
            (key, model, completion.text, completion.stop_reason, completion.input_tokens,
             completion.output_tokens, time.time()),
        )

    def __len__(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM calls").fetchone()[0]

    def checkpoint(self) -> None:
        """Fold the write-ahead log into the main file (e.g. before copying the run directory)."""
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
