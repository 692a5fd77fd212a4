"""KV-cache decoding against recomputing the whole prefix at every step, side by side.

    python bench/sampler_kv.py [--new-tokens 128] [--batch 8] [--prompt-len 64]

Both are greedy, jitted and run on the same small random model and prompts; compile time is
excluded (one warm-up call each). The recompute baseline is the naive decoder: a full forward
over the fixed-size token buffer for every new token. Both must produce the same tokens. The
last line is `sampler_kv: <ratio>x <ours tok/s> vs <recompute tok/s>`.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from exectune_jax.models import sampler
from exectune_jax.models.architecture import ModelConfig

from exectune_jax.models.transformer import Transformer

CONFIG = ModelConfig(
    model_type="llama", vocab_size=4096, hidden_size=256, intermediate_size=768, num_layers=4,
    num_heads=8, num_kv_heads=4, max_position_embeddings=1024, eos_token_id=1, pad_token_id=0,
)


@nnx.jit(static_argnames="new_tokens")
def recompute_decode(model, prompts, *, new_tokens):
    """Greedy decoding that reruns the full forward over the buffer for each new token."""
    batch, prompt_len = prompts.shape
    buffer = jnp.zeros((batch, prompt_len + new_tokens), jnp.int32).at[:, :prompt_len].set(prompts)
    positions = jnp.broadcast_to(jnp.arange(buffer.shape[1]), buffer.shape)

    def step(i, buffer):
        logits = model(buffer, positions)
        nxt = jnp.argmax(logits[:, prompt_len + i - 1], axis=-1).astype(jnp.int32)
        return buffer.at[:, prompt_len + i].set(nxt)

    return jax.lax.fori_loop(0, new_tokens, step, buffer)[:, prompt_len:]


def timed(fn, repeats: int) -> tuple[float, object]:
    result = fn()  # compile
    jax.block_until_ready(result)
    start = time.perf_counter()
    for _ in range(repeats):
        result = jax.block_until_ready(fn())
    return (time.perf_counter() - start) / repeats, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the KV-cache path")
    args = parser.parse_args()

    model = Transformer(CONFIG, rngs=nnx.Rngs(0))
    prompts = np.random.RandomState(0).randint(2, CONFIG.vocab_size, (args.batch, args.prompt_len))
    n_tokens = args.batch * args.new_tokens

    def ours():
        out = sampler.generate(model, prompts.tolist(), max_new_tokens=args.new_tokens,
                               temperature=0.0, stop_token_ids=())
        return np.array(out.tokens)

    def recompute():
        return recompute_decode(model, jnp.asarray(prompts), new_tokens=args.new_tokens)

    ours_s, ours_tokens = timed(ours, args.repeats)
    base_s, base_tokens = timed(recompute, 1)  # slow by design; one timed run is plenty
    same = np.array_equal(ours_tokens, np.asarray(base_tokens))
    print(f"model: {CONFIG.num_layers} layers, d={CONFIG.hidden_size}, vocab {CONFIG.vocab_size}; "
          f"batch {args.batch}, prompt {args.prompt_len}, {args.new_tokens} new tokens; "
          f"device {jax.devices()[0].device_kind}")
    print(f"kv cache:  {ours_s:.3f} s  ({n_tokens / ours_s:.0f} tok/s)")
    print(f"recompute: {base_s:.3f} s  ({n_tokens / base_s:.0f} tok/s)")
    print(f"same tokens: {same}")
    if not same:
        raise SystemExit("sampler_kv: KV-cache and recompute decoding disagree")
    print(f"sampler_kv: {base_s / ours_s:.1f}x {n_tokens / ours_s:.0f} vs {n_tokens / base_s:.0f}")


if __name__ == "__main__":
    main()
