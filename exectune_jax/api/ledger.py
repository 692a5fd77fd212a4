"""Tokens and USD of every model call, per stage, from a dated price table.

The ledger is an append-only JSONL file: one line per call, each line written by a single
`write` on an O_APPEND descriptor, so a killed run leaves whole lines only (a torn tail from a
crash mid-write is dropped on the next open). Reopening the same file continues its totals, so a
resumed run reports what the whole run cost. Cached replays are recorded too, at no charge, with
what they would have cost in `replayed_usd`.

A paid call's line also holds its cache key and the reply itself, written before the call cache
is: what was paid for is never lost to a later failed write, a deleted or damaged call cache is
rebuilt from the ledger (`paid_replies`) instead of being paid again. `write_totals()` leaves a
small JSON summary beside the ledger, derived from the ledger file itself (so stages appending
side by side never overwrite each other's spend), written whole or not at all.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from exectune_jax.errors import UserError
from exectune_jax.io import append_line, cut_torn_tail, read_jsonl, write_json_atomic

DEFAULT_PRICES = Path(__file__).resolve().parent.parent / "configs" / "prices.yaml"
STAGE_FIELDS = ("calls", "cached_calls", "input_tokens", "output_tokens", "usd", "replayed_usd",
                "cache_read_tokens", "cache_write_tokens", "batch_calls")


class PriceError(UserError):
    """A price table that is missing, malformed, or lacks a model in use."""


@dataclass(frozen=True)
class Price:
    input_per_mtok: float
    output_per_mtok: float
    cached_input_per_mtok: float | None = None  # a model's own cache-read price, where published


@dataclass(frozen=True)
class Discounts:
    """A provider's multipliers: of the input price for prompt-cache writes and reads, and of the
    whole call for batch work. A table without them prices everything as plain online input,
    which overstates, never understates, the spend."""

    cache_write: float = 1.0
    cache_read: float = 1.0
    batch: float = 1.0
    read_on: str | None = None


def cost_usd(price: Price, input_tokens: int, output_tokens: int) -> float:
    """USD of one call at per-million-token prices."""
    return (input_tokens * price.input_per_mtok + output_tokens * price.output_per_mtok) / 1e6


def charge_usd(price: Price, discounts: Discounts, input_tokens: int, output_tokens: int, *,
               cache_read: int = 0, cache_write: int = 0, batch: bool = False) -> float:
    """USD of one call whose `input_tokens` include `cache_read` and `cache_write` tokens:
    plain input at the input price, writes at `cache_write` times it, reads at the model's cached
    price (else `cache_read` times the input price); the sum times `batch` for batch work."""
    plain = input_tokens - cache_read - cache_write
    if plain < 0:
        raise ValueError(f"{cache_read} cache reads + {cache_write} writes exceed {input_tokens} input tokens")
    read_price = (price.cached_input_per_mtok if price.cached_input_per_mtok is not None
                  else price.input_per_mtok * discounts.cache_read)
    usd = (plain * price.input_per_mtok + cache_write * price.input_per_mtok * discounts.cache_write
           + cache_read * read_price + output_tokens * price.output_per_mtok) / 1e6
    return usd * (discounts.batch if batch else 1.0)


@dataclass(frozen=True)
class PriceTable:
    read_on: str
    models: Mapping[str, Price]
    source: str = "prices"
    providers: Mapping[str, Discounts] = field(default_factory=dict)

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
        """List price: every input token as plain online input."""
        return cost_usd(self.price(model), input_tokens, output_tokens)

    def discounts(self, provider: str | None) -> Discounts:
        return self.providers.get(provider or "", Discounts())

    def charge(self, model: str, provider: str | None, input_tokens: int, output_tokens: int, *,
               cache_read: int = 0, cache_write: int = 0, batch: bool = False) -> float:
        """What the provider bills: cache and batch rates applied."""
        return charge_usd(self.price(model), self.discounts(provider), input_tokens, output_tokens,
                          cache_read=cache_read, cache_write=cache_write, batch=batch)


def load_prices(path: str | Path | None = None) -> PriceTable:
    """Read a price table YAML: `read_on` date, `models: {name: {input_per_mtok, output_per_mtok,
    cached_input_per_mtok?}}` and optional `providers: {name: {read_on, cache_write, cache_read, batch}}`."""
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
            cached = entry.get("cached_input_per_mtok")
            models[str(name)] = Price(float(entry["input_per_mtok"]), float(entry["output_per_mtok"]),
                                      None if cached is None else float(cached))
        except (AttributeError, TypeError, KeyError, ValueError):
            raise PriceError(
                f"price table {path}: models.{name} needs numeric input_per_mtok and output_per_mtok"
            ) from None
    providers = {}
    for name, entry in (data.get("providers") or {}).items():
        try:
            extra = set(entry) - {"read_on", "cache_write", "cache_read", "batch"}
            if extra:
                raise KeyError(sorted(extra)[0])
            providers[str(name)] = Discounts(
                float(entry.get("cache_write", 1.0)), float(entry.get("cache_read", 1.0)),
                float(entry.get("batch", 1.0)),
                None if entry.get("read_on") is None else str(entry["read_on"]))
        except (AttributeError, TypeError, KeyError, ValueError):
            raise PriceError(
                f"price table {path}: providers.{name} takes numeric cache_write, cache_read, batch "
                "(multipliers) and read_on") from None
    return PriceTable(read_on=str(data["read_on"]), models=models, source=f"price table {path}",
                      providers=providers)


def _empty_stage() -> dict:
    return {k: 0.0 if k.endswith("usd") else 0 for k in STAGE_FIELDS}


def _add(totals: dict, row: Mapping) -> None:
    stage = totals.setdefault(row["stage"], _empty_stage())
    if row["cached"]:
        stage["cached_calls"] += 1
        stage["replayed_usd"] += row["replayed_usd"]
    else:
        stage["calls"] += 1
        stage["batch_calls"] += int(bool(row.get("batch", False)))
        for k in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"):
            stage[k] += row.get(k, 0)  # older ledgers have no cache fields
        stage["usd"] += row["usd"]


def read_totals(path: str | Path) -> dict[str, dict]:
    """Per-stage totals of a ledger file: what `Ledger.totals()` holds, read without opening it."""
    return Ledger._sum(Path(path))


_FRESH = "move the file aside to start a fresh ledger"


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
        cut_torn_tail(self.path)  # a crash mid-write tore the last line
        self._totals = self._sum(self.path)

    @staticmethod
    def _sum(path: Path) -> dict[str, dict]:
        totals: dict[str, dict] = {}
        for lineno, row in read_jsonl(path, hint=_FRESH):
            try:
                _add(totals, row)
            except (KeyError, TypeError):
                raise UserError(f"{path}:{lineno}: not a ledger record; {_FRESH}") from None
        return totals

    def paid_replies(self) -> Iterator[dict]:
        """The paid rows that carry their reply (key, model, text, stop_reason, tokens)."""
        if not self.path.exists():
            return
        for _, row in read_jsonl(self.path, hint=_FRESH):
            if not row["cached"] and "key" in row:
                yield row

    def record(self, stage: str, model: str, input_tokens: int, output_tokens: int,
               cached: bool, *, provider: str | None = None, cache_read: int = 0,
               cache_write: int = 0, batch: bool = False, key: str | None = None,
               text: str | None = None, stop_reason: str | None = None) -> float:
        """Append one call; returns the USD charged (0 for a cached replay).

        `input_tokens` counts every prompt token; `cache_read` and `cache_write` are the part the
        provider read from or wrote to its prompt cache; the charge applies `provider`'s cache
        and (when `batch`) batch rates. A replay is valued at list price, as a fresh online call.
        A paid call given its cache `key` keeps `text` and `stop_reason` in its line."""
        value = (self.prices.usd(model, input_tokens, output_tokens) if cached else
                 self.prices.charge(model, provider, input_tokens, output_tokens,
                                    cache_read=cache_read, cache_write=cache_write, batch=batch))
        row = {
            "time": round(time.time(), 3), "stage": stage, "model": model,
            "input_tokens": input_tokens, "output_tokens": output_tokens, "cached": cached,
            "usd": 0.0 if cached else value, "replayed_usd": value if cached else 0.0,
            "cache_read_tokens": cache_read, "cache_write_tokens": cache_write, "batch": batch,
        }
        if key is not None and not cached:
            row.update(key=key, text=text, stop_reason=stop_reason)
        line = (json.dumps(row) + "\n").encode()
        with self._lock:
            append_line(self._fd, self.path, line)
            _add(self._totals, row)
        return row["usd"]

    def totals(self) -> dict[str, dict]:
        """{stage: {calls, cached_calls, input_tokens, output_tokens, usd, replayed_usd,
        cache_read_tokens, cache_write_tokens, batch_calls}}; paid calls' input_tokens include
        their cache reads and writes (plain input = input - reads - writes)."""
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
        """Write the per-stage totals of the whole ledger file (every process's lines) and the
        price date beside the ledger, atomically."""
        stages = read_totals(self.path) if self.path.exists() else {}
        summary = {"prices_read_on": self.prices.read_on,
                   "usd": sum(t["usd"] for t in stages.values()), "stages": stages,
                   "discounts_read_on": {name: d.read_on for name, d in self.prices.providers.items()}}
        write_json_atomic(self.totals_path, summary)
        return self.totals_path

    def close(self) -> None:
        if self._fd < 0:
            return
        try:
            self.write_totals()
        finally:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
