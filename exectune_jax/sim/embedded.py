"""The embedded sim for a run: `serving(cfg)` starts one loopback server for the endpoints whose
base_url is "sim" and yields the config with their URLs filled in.

The API pool only ever takes URLs; the entry points that run stages (the CLI's stage commands,
the demo, a Python caller) wrap them in `serving`, so one server answers every endpoint of the
run and stops when the stage ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

from exectune_jax.api.pool import ENDPOINT_NAMES
from exectune_jax.config import SIM_URL
from exectune_jax.sim.server import SimServer, sim_base_url


def sim_endpoints(cfg: Any) -> list[str]:
    """The names of the config's endpoints that name the embedded sim."""
    return [name for name in ENDPOINT_NAMES
            if (ep := getattr(cfg.api, name)) is not None and ep.base_url == SIM_URL]


def with_sim_url(cfg: Any, root: str) -> Any:
    """`cfg` with every endpoint that names the sim pointed at the server at `root`."""
    endpoints = {name: getattr(cfg.api, name) for name in sim_endpoints(cfg)}
    served = {name: dataclasses.replace(ep, base_url=sim_base_url(root, ep.provider))
              for name, ep in endpoints.items()}
    return dataclasses.replace(cfg, api=dataclasses.replace(cfg.api, **served))


@contextlib.contextmanager
def serving(cfg: Any) -> Iterator[Any]:
    """`cfg` served: its "sim" endpoints answered by one server built from its `sim` section
    (stopped on exit); a config that names no "sim" endpoint is yielded as it is."""
    if not sim_endpoints(cfg):
        yield cfg
        return
    with SimServer.from_config(cfg.sim) as server:
        yield with_sim_url(cfg, server.url)
