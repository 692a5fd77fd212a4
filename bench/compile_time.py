"""Compile seconds of the SFT step, the GRPO update and the decode loop as the guide gets deeper.

    python bench/compile_time.py [--layers 2,14,28] [--remat full]

Each program is lowered and compiled from scratch (the persistent compilation cache is off),
timed in process CPU seconds, on a tiny-width model with 2, 14 and 28 layers. A decoder whose
blocks run as one scan compiles in about the same time at any depth; a Python loop of blocks
grows with it. The last line is
`compile_time: <deepest / shallowest>x <deepest s> vs <shallowest s>` over the three programs
together (target: at most 1.5x).
"""

from __future__ import annotations

import argparse
import time

import jax

jax.config.update("jax_enable_compilation_cache", False)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from exectune_jax.models import sampler  # noqa: E402
from exectune_jax.models.architecture import ModelConfig  # noqa: E402
from exectune_jax.models.transformer import Transformer, init_cache  # noqa: E402
from exectune_jax.train import rl_step, sft  # noqa: E402

BATCH, SEQ, GEN = 4, 64, 32


def tiny(layers: int) -> ModelConfig:
    return ModelConfig(model_type="qwen3", vocab_size=256, hidden_size=64, intermediate_size=128,
                       num_layers=layers, num_heads=4, num_kv_heads=2, eos_token_id=1,
                       pad_token_id=0)


def seconds(lower) -> float:
    """CPU seconds (all threads) of lowering and compiling: steady on a shared, busy machine."""
    start = time.process_time()
    lower().compile()
    return time.process_time() - start


def programs(cfg: ModelConfig, remat: str | None) -> dict[str, float]:
    """Compile seconds of each program for one model depth."""
    model = Transformer(cfg, rngs=nnx.Rngs(0), **({"remat": remat} if remat else {}))
    tx = optax.adamw(1e-4)
    tokens = np.ones((BATCH, SEQ), np.int32)
    positions = np.broadcast_to(np.arange(SEQ, dtype=np.int32), (BATCH, SEQ))
    sft_batch = {"tokens": tokens, "positions": positions, "segment_ids": np.ones_like(tokens),
                 "targets": tokens, "loss_mask": np.ones_like(tokens, np.float32)}
    sft_def, sft_state = nnx.split((model, nnx.Optimizer(model, tx, wrt=nnx.Param)))

    graphdef, params = nnx.split(model)
    layout = rl_step.Layout(rows=BATCH, micro=BATCH // 2, seq_len=SEQ)
    batch = rl_step.build_batch([[2, 3]] * BATCH, [[4] * 8] * BATCH, [np.zeros(8)] * BATCH,
                                np.ones(BATCH), np.ones(BATCH, bool), layout)
    ref_logp = np.zeros_like(batch["mask"])
    update = rl_step.make_train_step(graphdef, tx, clip_eps=0.2, beta=0.04)

    cache = init_cache(cfg, BATCH, SEQ + GEN)
    decode_args = (graphdef, params, cache, jnp.zeros((BATCH, cfg.vocab_size)),
                   jnp.full((BATCH,), SEQ, jnp.int32), jax.random.key(0), jnp.int32(GEN),
                   jnp.float32(1.0), jnp.float32(1.0), jnp.int32(0), jnp.ones((1, 1), jnp.int32))
    return {
        "sft step": seconds(lambda: sft.make_train_step(sft_def).lower(sft_state, sft_batch)),
        "rl update": seconds(lambda: update.lower(params, tx.init(params), batch, ref_logp)),
        "decode": seconds(lambda: sampler._decode.lower(*decode_args, pad_id=0, gen_len=GEN,
                                                        filtered=False)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="2,14,28", help="comma-separated depths")
    parser.add_argument("--remat", default="full",
                        help="model.remat of the guide ('' for a model without the option)")
    args = parser.parse_args()
    depths = [int(d) for d in args.layers.split(",")]
    totals = {}
    for depth in depths:
        times = programs(tiny(depth), args.remat or None)
        totals[depth] = sum(times.values())
        parts = ", ".join(f"{k} {v:.2f} s" for k, v in times.items())
        print(f"{depth:3d} layers: {parts}; total {totals[depth]:.2f} s", flush=True)
    deep, shallow = totals[max(depths)], totals[min(depths)]
    print(f"compile_time: {deep / shallow:.2f}x {deep:.2f} s vs {shallow:.2f} s "
          f"({max(depths)} vs {min(depths)} layers)")


if __name__ == "__main__":
    main()
