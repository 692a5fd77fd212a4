"""Tokens and USD of every model call, per stage, from a dated price table.

The ledger is an append-only JSONL file: one line per call, each line written by a single
`write` on an O_APPEND descriptor, so a killed run leaves whole lines only (a torn tail from a
crash mid-write is dropped on the next open). Reopening the same file continues its totals, so a
resumed run reports what the whole run cost. Cached replays are recorded too, at no charge, with
what they would have cost in `replayed_usd`. `write_totals()` leaves a small JSON summary
beside the ledger (written to a temp file and renamed, so it is never half written).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from exectune_jax.errors import UserError

DEFAULT_PRICES = Path(__file__).resolve().parent.parent / "configs" / "prices.yaml"
STAGE_FIELDS = ("calls", "cached_calls", "input_tokens", "output_tokens", "usd", "replayed_usd")


class PriceError(UserError):
    """A price table that is missing, malformed, or lacks a model in use."""


@dataclass(frozen=True)
class Price:
    input_per_mtok: float
    output_per_mtok: float


def cost_usd(price: Price, input_tokens: int, output_tokens: int) -> float:
    """USD of one call at per-million-token prices."""
    return (input_tokens * price.input_per_mtok + output_tokens * price.output_per_mtok) / 1e6


@dataclass(frozen=True)
class PriceTable:
    read_on: str
    models: Mapping[str, Price]
    source: str = "prices"

    def price(self, model: str) -> Price:
        """The entry that `model` equals or starts with (longest wins), so dated or `-latest`
        model names find their family's price."""
        matches = [name for name in self.models if model == name or model.startswith(name + "-")]
        if not matches:
            raise PriceError(
                f"{self.source}: no price for model {model!r}; add it under `models:` as "
                f"`{model}: {{input_per_mtok: X, output_per_mtok: Y}}` (0 and 0 for a self-hosted model)"
            )
        return self.models[max(matches, key=len)]

    def usd(self, model: str, input_tokens: int, output_tokens: int) -> float:
        return cost_usd(self.price(model), input_tokens, output_tokens)


def load_prices(path: str | Path | None = None) -> PriceTable:
    """Read a price table YAML (`read_on` date + `models: {name: {input_per_mtok, output_per_mtok}}`)."""
    path = Path(path) if path else DEFAULT_PRICES
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise PriceError(f"price table {path}: cannot read it ({e.strerror}); check api.prices") from None
    except yaml.YAMLError as e:
        raise PriceError(f"price table {path}: not valid YAML ({e})") from None
    if not isinstance(data, dict) or "read_on" not in data or not isinstance(data.get("models"), dict):
        raise PriceError(f"price table {path}: needs `read_on: YYYY-MM-DD` and a `models:` mapping")
    models = {}
    for name, entry in data["models"].items():
        try:
            models[str(name)] = Price(float(entry["input_per_mtok"]), float(entry["output_per_mtok"]))
        except (TypeError, KeyError, ValueError):
            raise PriceError(
                f"price table {path}: models.{name} needs numeric input_per_mtok and output_per_mtok"
            ) from None
    return PriceTable(read_on=str(data["read_on"]), models=models, source=f"price table {path}")


def _empty_stage() -> dict:
    return {k: 0.0 if k.endswith("usd") else 0 for k in STAGE_FIELDS}


def _add(totals: dict, row: Mapping) -> None:
    stage = totals.setdefault(row["stage"], _empty_stage())
    if row["cached"]:
        stage["cached_calls"] += 1
        stage["replayed_usd"] += row["replayed_usd"]
    else:
        stage["calls"] += 1
        stage["input_tokens"] += row["input_tokens"]
        stage["output_tokens"] += row["output_tokens"]
        stage["usd"] += row["usd"]


class Ledger:
    """Append-only record of calls; `totals()` per stage; safe to use from many threads."""

    def __init__(self, path: str | Path, prices: PriceTable | str | Path | None = None):
        self.path = Path(path)
        self.prices = prices if isinstance(prices, PriceTable) else load_prices(prices)
        self._lock = threading.Lock()
        self._totals: dict[str, dict] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._load()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        whole = data[: data.rfind(b"\n") + 1]
        if len(whole) != len(data):  # a crash mid-write: drop the torn tail
            with open(self.path, "r+b") as f:
                f.truncate(len(whole))
        for lineno, line in enumerate(whole.decode().splitlines(), 1):
            try:
                _add(self._totals, json.loads(line))
            except (ValueError, KeyError, TypeError):
                raise UserError(
                    f"ledger {self.path} line {lineno}: not a ledger record; "
                    "move the file aside to start a fresh ledger"
                ) from None

    def record(self, stage: str, model: str, input_tokens: int, output_tokens: int,
               cached: bool) -> float:
        """Append one call; returns the USD charged (0 for a cached replay)."""
        value = self.prices.usd(model, input_tokens, output_tokens)
        row = {
            "time": round(time.time(), 3), "stage": stage, "model": model,
            "input_tokens": input_tokens, "output_tokens": output_tokens, "cached": cached,
            "usd": 0.0 if cached else value, "replayed_usd": value if cached else 0.0,
        }
        line = (json.dumps(row) + "\n").encode()
        with self._lock:
            written = os.write(self._fd, line)
            if written != len(line):  # a short write on a full disk: never leave a torn line
                os.ftruncate(self._fd, os.lseek(self._fd, 0, os.SEEK_END) - written)
                raise OSError(f"ledger {self.path}: disk full while appending")
            _add(self._totals, row)
        return row["usd"]

    def totals(self) -> dict[str, dict]:
        """{stage: {calls, cached_calls, input_tokens, output_tokens, usd, replayed_usd}}."""
        with self._lock:
            return {stage: dict(t) for stage, t in self._totals.items()}

    def spent_usd(self) -> float:
        """USD paid so far over all stages (replays excluded), this run and earlier ones."""
        with self._lock:
            return sum(t["usd"] for t in self._totals.values())

    @property
    def totals_path(self) -> Path:
        return self.path.with_name(self.path.stem + "_totals.json")

    def write_totals(self) -> Path:
        """Write the per-stage totals and the price date beside the ledger, atomically."""
        summary = {"prices_read_on": self.prices.read_on, "usd": self.spent_usd(),
                   "stages": self.totals()}
        # one temp name per process: stages running side by side share the run's ledger
        tmp = self.totals_path.with_suffix(f".json.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        os.replace(tmp, self.totals_path)
        return self.totals_path

    def close(self) -> None:
        if self._fd >= 0:
            self.write_totals()
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
