"""RL step time with the core in the loop: overlapped labelling vs the synchronous loop.

A sim server in its own process answers every core call after a fixed latency (500 ms by
default), standing in for a paid API. The same RL run (tiny demo guide, advisor preset so every
sample goes to the core, same seed and sizes) is timed twice in fresh run directories (no
shared call cache):

- synchronous: rl.staleness = 0 — sample, wait for the core to label, update;
- overlapped:  rl.staleness = S — the device samples the next batches from the current weights
  while the pool labels earlier ones (up to S batches in flight), stale samples corrected by
  the clipped importance ratio.

Per step, device time = sampling + update and core time = the wall time to label one batch.
The overlapped loop should approach max(device, core / S) — never worse than
max(device, core) — while the synchronous one pays device + core. Steady-state steps only (the
first `--warmup` steps carry compilation). The last line is
`rl_overlap: <ratio>x <overlapped s/step> vs <synchronous s/step>`.

    python bench/rl_overlap.py [--latency-ms 500] [--staleness 2] [--steps 10]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
from pathlib import Path


def _serve(latency_ms: float, queue: mp.Queue, stop: mp.Event) -> None:
    from exectune_jax.sim.server import SimServer

    with SimServer(latency_ms=latency_ms) as server:
        queue.put(server.url)
        stop.wait()


def _guide(out: Path) -> Path:
    from exectune_jax.data import tasks
    from exectune_jax.sim.guide import BaseGuideSpec, build_base_guide

    spec = BaseGuideSpec(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2,
                         num_heads=4, num_kv_heads=2, warmup_steps=2, warmup_batch_size=4)
    build_base_guide(tasks.get("arith", n_train=256).problems("train"), spec, 0, out)
    return out


def _run(run_dir: Path, guide: Path, url: str, staleness: int, args) -> dict:
    from exectune_jax.config import load_config
    from exectune_jax.sim import serving
    from exectune_jax.train import grpo
    from exectune_jax.train.metrics import read_metrics

    cfg = load_config(None, [
        f"run_dir={run_dir}", f"rl.init={guide}", "mesh.fsdp=1", "metrics.progress=false",
        "task.options.n_train=256", "rl.preset=advisor", f"rl.steps={args.steps}",
        f"rl.prompts_per_step={args.prompts}", f"rl.group_size={args.group}",
        f"rl.max_new_tokens={args.new_tokens}", "rl.micro_batch=0", "rl.held_out=0",
        f"rl.staleness={staleness}", f"rl.checkpoint_every={args.steps}",
        f"api.core.base_url={url}/v1", "api.core_strong=null", "api.concurrency=64",
    ])
    with serving(cfg) as served:  # the core above; the judge of the follow check embedded
        grpo.train(served)
    rows = read_metrics(run_dir / "rl")[args.warmup:]
    mean = lambda key: statistics.fmean(r[key] for r in rows)  # noqa: E731
    return {
        "step_s": mean("step_s"),
        "device_s": statistics.fmean(r["sample_s"] + r["update_s"] for r in rows),
        "core_s": mean("label_s"),
        "pool_wait_s": mean("pool_wait_s"),
        "device_busy": mean("device_busy"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=500.0)
    parser.add_argument("--staleness", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # grain reads absl flags (grain issue #1355)

    ctx = mp.get_context("spawn")
    queue, stop = ctx.Queue(), ctx.Event()
    server = ctx.Process(target=_serve, args=(args.latency_ms, queue, stop), daemon=True)
    server.start()
    try:
        url = queue.get(timeout=60)
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            guide = _guide(tmp / "guide")
            over = _run(tmp / "overlapped", guide, url, args.staleness, args)
            sync = _run(tmp / "synchronous", guide, url, 0, args)
    finally:
        stop.set()
        server.join(timeout=10)

    for name, r in (("synchronous", sync), (f"overlapped (staleness {args.staleness})", over)):
        print(f"{name:<26} {r['step_s']:.3f} s/step  device {r['device_s']:.3f} s  core "
              f"{r['core_s']:.3f} s  waiting on pool {r['pool_wait_s']:.3f} s  device busy "
              f"{r['device_busy']:.0%}")
    bound = max(over["device_s"], over["core_s"])
    print(f"overlapped step / max(device, core) = {over['step_s'] / bound:.2f} "
          f"(target <= 1.25)")
    ratio = sync["step_s"] / over["step_s"]
    print(f"rl_overlap: {ratio:.2f}x {over['step_s']:.3f} vs {sync['step_s']:.3f}")


if __name__ == "__main__":
    main()
