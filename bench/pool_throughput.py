"""Call-pool throughput against a slow API: does the pool keep every worker busy?

A sim server in its own process answers each request after a fixed latency (200 ms by default).
With W workers the ideal rate is W / latency; the pool's overhead (rate buckets, cache lookups,
ledger writes, retries bookkeeping, HTTP client) shows up as the gap to it. The last line is
`pool_throughput: <ratio>x <ours> req/s vs <ideal> req/s`.

    python bench/pool_throughput.py [--workers 64] [--latency-ms 200] [--requests 1600]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time
from pathlib import Path


def _serve(latency_ms: float, queue: mp.Queue, stop: mp.Event) -> None:
    from exectune_jax.sim.server import SimServer

    with SimServer(latency_ms=latency_ms) as server:
        queue.put(server.url)
        stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--requests", type=int, default=1600)
    args = parser.parse_args()

    from exectune_jax.api.cache import Cache
    from exectune_jax.api.ledger import Ledger
    from exectune_jax.api.pool import Pool, Request
    from exectune_jax.config import ApiConfig, EndpointConfig

    ctx = mp.get_context("spawn")
    queue, stop = ctx.Queue(), ctx.Event()
    server = ctx.Process(target=_serve, args=(args.latency_ms, queue, stop), daemon=True)
    server.start()
    try:
        url = queue.get(timeout=60)
        ep = EndpointConfig(base_url=url + "/v1", model="sim-core", max_tokens=64)
        cfg = ApiConfig(core=ep, concurrency=args.workers)
        reqs = [Request("core", [("user", f"What is {i} + {i + 1}?")], sample_index=i)
                for i in range(args.requests)]
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(tmp)
            with Pool({"core": ep}, cfg, cache=Cache(run_dir / "calls.sqlite"),
                      ledger=Ledger(run_dir / "ledger.jsonl")) as pool:
                pool.map([Request("core", [("user", f"warm-up {i}")]) for i in range(args.workers)])
                t0 = time.perf_counter()
                results = pool.map(reqs)
                seconds = time.perf_counter() - t0
                stats = pool.stats
    finally:
        stop.set()
        server.join(timeout=10)

    assert all(r.ok for r in results), stats
    ours = len(results) / seconds
    ideal = args.workers / (args.latency_ms / 1000.0)
    print(f"{len(results)} requests, {args.workers} workers, {args.latency_ms:.0f} ms latency: "
          f"{seconds:.2f} s (ideal {len(results) / ideal:.2f} s), retries {stats['retries']}")
    print(f"pool_throughput: {ours / ideal:.3f}x {ours:.1f} req/s vs {ideal:.1f} req/s")


if __name__ == "__main__":
    main()
