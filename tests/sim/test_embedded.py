"""sim.serving: one embedded server for the endpoints that name "sim", only while the stage runs."""

import dataclasses

import pytest
import requests

from exectune_jax.api.pool import ENDPOINT_NAMES
from exectune_jax.config import load_config
from exectune_jax.sim import serving


def test_serving_points_every_sim_endpoint_at_one_server_and_stops_it_after():
    cfg = load_config(None, ["api.teacher.provider=anthropic", "api.judge.base_url=http://judge:9/v1"])
    with serving(cfg) as served:
        root = served.api.teacher.base_url
        assert served.api.core.base_url == root + "/v1"  # OpenAI-style URLs end in /v1
        assert served.api.judge == cfg.api.judge  # a URL already: left as it is
        assert dataclasses.replace(served, api=cfg.api) == cfg  # nothing else changes
        assert requests.get(root + "/v1/models", timeout=5).status_code < 500
    with pytest.raises(requests.ConnectionError):
        requests.get(root + "/v1/models", timeout=5)


def test_a_config_naming_no_sim_endpoint_is_served_as_it_is():
    urls = {f"api.{n}.base_url": "http://api.example/v1" for n in ENDPOINT_NAMES}
    cfg = load_config(None, [f"{k}={v}" for k, v in urls.items()])
    with serving(cfg) as served:
        assert served is cfg
