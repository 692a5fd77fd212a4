"""A client process for the kill-and-resume tests: `python resume_client.py BASE_URL RUN_DIR N [MODE PROVIDER]`.

It sends the same N requests `requests_for(N)` that the test sends after killing it; MODE batch
sends them through the batch API (recorded in RUN_DIR/batches.jsonl)."""

from __future__ import annotations

import sys
from pathlib import Path

from loopback import make_pool

from exectune_jax.api.pool import Request
from exectune_jax.config import EndpointConfig

CONCURRENCY = 4


def requests_for(n: int) -> list[Request]:
    return [Request("core", [("user", f"resume question {i}")], stage="sample") for i in range(n)]


def main(base_url: str, run_dir: str, n: str, mode: str = "online", provider: str = "openai") -> None:
    ep = EndpointConfig(provider=provider, base_url=base_url, timeout_s=10.0, max_tokens=32)
    batch = {"mode": "batch", "batch_poll_s": 0.05, "batch_log": Path(run_dir) / "batches.jsonl"}
    with make_pool(Path(run_dir), {"core": ep}, concurrency=CONCURRENCY,
                   **(batch if mode == "batch" else {})) as pool:
        pool.map(requests_for(int(n)))


if __name__ == "__main__":
    main(*sys.argv[1:])
