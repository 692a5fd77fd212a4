"""The output head over sequence chunks: next-token log-probs and entropy in bounded memory.

Full logits are [B, T, V] float32: at Qwen3's 151,936-token vocabulary one micro-batch of
16 x 608 tokens is ~5.9 GB, and a plain backward pass keeps them (and their softmax) alive.
Here the final hidden states are cut into chunks of `chunk` positions; one rematerialised scan
step projects a chunk, reduces it to per-token numbers and drops its logits, and the backward
pass recomputes them one chunk at a time. Peak head memory is then [B, chunk, V], and the
numbers equal the unchunked ones (the same per-position math; only the grouping differs).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from exectune_jax.models.transformer import project
from exectune_jax.train.grpo_loss import token_entropy, token_logprobs


def chunked_head(
    x: jax.Array, head: jax.Array, targets: jax.Array, chunk: int, temperature: float = 1.0,
    top_p: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """(log p(target) [B,T], entropy [B,T]) from final hidden states x [B,T,E], of the
    distribution sampled at `temperature` and `top_p` (train/grpo_loss.py; 1 and 1: the model's
    own, as SFT's loss wants).

    `chunk` positions per head step (0 or >= T: the whole sequence at once). The entropy is a
    diagnostic and carries no gradient.
    """
    b, t, e = x.shape
    size = t if chunk <= 0 else min(chunk, t)
    pad = -t % size
    n = (t + pad) // size
    xs = jnp.pad(x, ((0, 0), (0, pad), (0, 0))).reshape(b, n, size, e).swapaxes(0, 1)
    ts = jnp.pad(targets, ((0, 0), (0, pad))).reshape(b, n, size).swapaxes(0, 1)

    @jax.checkpoint
    def one(_, chunk_xs):
        xc, tc = chunk_xs
        logits = project(xc, head)
        return None, (token_logprobs(logits, tc, temperature, top_p),
                      token_entropy(jax.lax.stop_gradient(logits), temperature, top_p))

    _, (logp, entropy) = jax.lax.scan(one, None, (xs, ts))
    unchunk = lambda a: a.swapaxes(0, 1).reshape(b, n * size)[:, :t]  # noqa: E731
    return unchunk(logp), unchunk(entropy)
