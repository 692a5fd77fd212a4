"""XLA:CPU's fp32 matrix products against PyTorch's, at the SFT step's shapes, side by side.

Two thirds of our SFT step is matmuls (`sft_throughput.py --profile`), so this says how much of
the step's gap to PyTorch eager is the matmul kernels themselves. Shapes (M x K times K x N, the
step's tokens as M) of SmolLM2-135M's step, 4 x 128 tokens, and the demo guide's, 8 x 256:

- `smollm2/mlp`: 512 x 576 times 576 x 1536 (the SwiGLU projections);
- `smollm2/head`: 512 x 576 times 576 x 49152 (the tied vocabulary head);
- `demo/mlp`: 2048 x 128 times 128 x 384.

Each is timed as `reps` products in a row, after one warm-up call; rounds alternate between
the two sides and the median round counts; one process, the default thread counts of both.

    python bench/matmul.py [--rounds 5] [--reps 20]

One line per shape, `matmul/<shape>: <ratio>x <ours GFLOP/s> vs <torch GFLOP/s>`, the ratio
being ours over PyTorch's.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

SHAPES = {"smollm2/mlp": (512, 576, 1536), "smollm2/head": (512, 576, 49152),
          "demo/mlp": (2048, 128, 384)}


def timed(fn, reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        out = fn()
    if isinstance(out, jax.Array):
        out.block_until_ready()
    return time.perf_counter() - start


def measure(name: str, rounds: int, reps: int) -> str:
    m, k, n = SHAPES[name]
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    product = jax.jit(jnp.matmul)
    np.testing.assert_allclose(np.asarray(product(ja, jb)), (ta @ tb).numpy(), rtol=1e-3, atol=1e-2)
    flops = 2 * m * k * n * reps
    rates: dict[str, list[float]] = {"ours": [], "torch": []}
    for _ in range(rounds):
        rates["ours"].append(flops / timed(lambda: product(ja, jb), reps) / 1e9)
        rates["torch"].append(flops / timed(lambda: ta @ tb, reps) / 1e9)
    ours, ref = (statistics.median(rates[side]) for side in ("ours", "torch"))
    return f"matmul/{name}: {ours / ref:.2f}x {ours:.1f} vs {ref:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    print(f"torch threads {torch.get_num_threads()}, {jax.device_count()} JAX device(s)")
    print("\n".join(measure(name, args.rounds, args.reps) for name in SHAPES))


if __name__ == "__main__":
    main()
