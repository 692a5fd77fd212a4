"""Loopback fixtures for the API tests."""

from __future__ import annotations

import pytest
from loopback import MODELS

from exectune_jax.sim.server import SimServer


@pytest.fixture
def sim_server():
    """A factory of started servers (stopped at teardown); keyword args go to SimServer."""
    servers = []

    def make(**kwargs):
        kwargs.setdefault("models", MODELS)
        server = SimServer(**kwargs)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()

