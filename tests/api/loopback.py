"""Helpers shared by the API tests: a tiny deterministic model and pools on a loopback sim server."""

from __future__ import annotations

import hashlib
from pathlib import Path

from exectune_jax.api.cache import Cache
from exectune_jax.api.ledger import Ledger
from exectune_jax.api.pool import Pool
from exectune_jax.config import ApiConfig, EndpointConfig
from exectune_jax.sim.server import sim_base_url


class EchoModel:
    """Deterministic in (messages, temperature, seed), like the real sim models, and cheap."""

    def complete(self, messages, *, max_tokens, temperature, seed):
        h = hashlib.sha256(repr((messages, temperature, seed)).encode()).hexdigest()[:12]
        return f"answer {h} for {messages[-1]['content'][:40]}"


MODELS = {"sim-core": EchoModel(), "sim-teacher": EchoModel()}


def expected_text(messages, temperature=0.0, seed=0):
    return EchoModel().complete(messages, max_tokens=0, temperature=temperature, seed=seed)


def endpoint(server, provider="openai", **kwargs) -> EndpointConfig:
    kwargs.setdefault("timeout_s", 5.0)
    kwargs.setdefault("max_tokens", 32)
    return EndpointConfig(provider=provider, base_url=sim_base_url(server.url, provider), **kwargs)


def api_config(**kwargs) -> ApiConfig:
    defaults = dict(concurrency=16, max_retries=20, backoff_base_s=0.005, backoff_max_s=0.05,
                    circuit_breaker_failures=1000, circuit_breaker_cooldown_s=1.0)
    return ApiConfig(**{**defaults, **kwargs})


def make_pool(run_dir: Path, endpoints: dict, batch_log: Path | None = None, **cfg) -> Pool:
    return Pool(endpoints, api_config(**cfg), cache=Cache(run_dir / "calls.sqlite"),
                ledger=Ledger(run_dir / "ledger.jsonl"), batch_log=batch_log)
