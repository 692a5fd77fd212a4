"""Resolve endpoints whose base_url is "sim" to a loopback server started for the command.

A stage command works the same against a real API and the embedded default: when any endpoint
names the sim, one `SimServer` is started with `cfg.sim` for the duration of the command and its
URL replaces "sim" in every such endpoint. Endpoints that already name a URL are left alone, so
the demo can start one server and hand the resolved config to every stage.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

from exectune_jax.config import SIM_URL, ApiConfig, Config

ENDPOINT_FIELDS = ("core", "teacher", "judge", "core_strong")


def uses_sim(api: ApiConfig) -> bool:
    return any(
        getattr(api, name) is not None and getattr(api, name).base_url == SIM_URL
        for name in ENDPOINT_FIELDS
    )


def with_base_url(api: ApiConfig, url: str) -> ApiConfig:
    """`api` with every "sim" base_url replaced by `url`."""
    changes = {}
    for name in ENDPOINT_FIELDS:
        ep = getattr(api, name)
        if ep is not None and ep.base_url == SIM_URL:
            changes[name] = dataclasses.replace(ep, base_url=url)
    return dataclasses.replace(api, **changes)


@contextlib.contextmanager
def sim_server(cfg: Config) -> Iterator[str]:
    """A started SimServer configured from `cfg.sim`; yields its base URL."""
    from exectune_jax.sim.server import SimServer

    s = cfg.sim
    server = SimServer(host=s.host, port=s.port, latency_ms=s.latency_ms, rpm=s.rpm,
                       fault_rate=s.fault_rate, seed=s.seed)
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


@contextlib.contextmanager
def endpoints_with_sim(cfg: Config) -> Iterator[ApiConfig]:
    """`cfg.api` with "sim" endpoints pointing at a server that lives as long as the block."""
    if not uses_sim(cfg.api):
        yield cfg.api
        return
    with sim_server(cfg) as url:
        yield with_base_url(cfg.api, url)
