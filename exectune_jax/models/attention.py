"""Attention: the mask rule, and one `attend` that dispatches to the kernel that fits.

A query attends a key when both carry the same segment id and the key's slot is not after the
query's slot (training, packing and the KV cache alike). `attend` picks, by platform and shape:
cuDNN's fused attention on GPU, the splash kernel on TPU, else XLA with causal query blocks
that skip the score work causality masks anyway; `attend_reference` is the plain computation
every path is tested against.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from exectune_jax.parallel import fit_spec, logical_to_spec


def attention_mask(
    q_segments: jax.Array, q_slots: jax.Array, kv_segments: jax.Array, kv_slots: jax.Array
) -> jax.Array:
    """[B,T,S] bool: same segment and key slot not after the query slot."""
    same = q_segments[:, :, None] == kv_segments[:, None, :]
    causal = kv_slots[None, None, :] <= q_slots[None, :, None]
    return same & causal


ATTENTION_SCORE_BYTES = 2**28
"""Bound on one block of float32 scores [B, H, block, S] on the XLA attention path."""
MIN_QUERY_BLOCK = 16


def query_block(batch: int, heads: int, queries: int, keys: int) -> int:
    """Query positions per attention step: a power of two keeping scores within the bound."""
    fit = ATTENTION_SCORE_BYTES // (4 * batch * heads * keys)
    return max(MIN_QUERY_BLOCK, 1 << max(fit, 1).bit_length() - 1) if fit < queries else queries


CAUSAL_BLOCKS = 4
"""Query blocks of self-attention on the XLA path. Block i attends only the keys up to its own
end (later keys are masked by causality), which skips (n - 1) / 2n of the score work: 37.5% at
4, which measured fastest on XLA:CPU for the demo's 8 x 256 SFT step (1.17x the whole step
over one block; 3 and 6 blocks were slower, each block adds its own small ops)."""
MAX_CAUSAL_BLOCKS = 16
"""More blocks than this (a long sequence under the memory bound) run as one scan instead, so
the program does not grow with the sequence length."""


def causal_blocks(batch: int, heads: int, length: int) -> list[tuple[int, int]]:
    """[start, end) of each query block of self-attention over `length` slots, or [] when the
    memory bound needs more than MAX_CAUSAL_BLOCKS of them."""
    size = max(MIN_QUERY_BLOCK, -(-length // CAUSAL_BLOCKS))
    size = min(size, query_block(batch, heads, length, length))
    if -(-length // size) > MAX_CAUSAL_BLOCKS:
        return []
    return [(start, min(length, start + size)) for start in range(0, length, size)]


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Grouped-query attention without the full score matrix: q [B,T,H,D], k/v [B,S,K,D].

    What runs where:
    - GPU, half precision, several queries (training, prefill): cuDNN's fused kernel through
      `jax.nn.dot_product_attention`, given the mask itself.
    - TPU, self-attention over one sequence of slots (T == S: training, log-probs, a prefill
      that fills the whole cache): the Pallas splash kernel (`attend_splash`), given segment
      ids derived from the mask and its own causal rule.
    - Everywhere else (CPU; on TPU, one-token decode steps and the sampler's prefill, whose
      cache is longer than the prompt) through `attend_reference`, in query blocks so neither
      the forward nor the backward pass holds [B,H,T,S] scores. Self-attention (T == S) runs
      `causal_blocks`, each block over the keys up to its own end; otherwise (or when that
      would take too many blocks) a scan over blocks of `query_block` queries, each
      rematerialised.
    T == S means queries and keys are the same slots 0..T-1 (no cache, or a prefill that fills
    the whole cache from slot 0), so a key after a query's block is masked by causality and
    skipping it changes nothing. The mask [B,T,S] is the one from `attention_mask` on every
    path.
    """
    b, t, h, d = q.shape
    if _cudnn_applies(q):
        return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], scale=d**-0.5,
                                            implementation="cudnn")
    if _splash_applies(q, k):
        return attend_splash(q, k, v, mask)
    blocks = causal_blocks(b, h, t) if t == k.shape[1] else []
    if blocks:
        return _attend_causal(q, k, v, mask, blocks)
    size = query_block(b, h, t, k.shape[1])
    if size >= t:
        return attend_reference(q, k, v, mask)
    pad = -t % size
    n = (t + pad) // size
    qs = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0))).reshape(b, n, size, h, d).swapaxes(0, 1)
    ms = jnp.pad(mask, ((0, 0), (0, pad), (0, 0))).reshape(b, n, size, -1).swapaxes(0, 1)

    @jax.checkpoint
    def block(_, xs):
        return None, attend_reference(xs[0], k, v, xs[1])

    _, out = jax.lax.scan(block, None, (qs, ms))
    return out.swapaxes(0, 1).reshape(b, n * size, h, d)[:, :t]


def _attend_causal(q, k, v, mask, blocks: list[tuple[int, int]]) -> jax.Array:
    """Self-attention as query blocks over the keys up to each block's end; each block is
    rematerialised when the whole score matrix would exceed the memory bound."""
    b, t, h, _ = q.shape
    one = attend_reference if query_block(b, h, t, t) >= t else jax.checkpoint(attend_reference)
    return jnp.concatenate([one(q[:, i:e], k[:, :e], v[:, :e], mask[:, i:e, :e])
                            for i, e in blocks], axis=1)


def _cudnn_applies(q: jax.Array) -> bool:
    """cuDNN's flash attention needs a GPU, fp16/bf16 and a head dim that is a multiple of 8."""
    d = q.shape[-1]
    half = q.dtype in (jnp.bfloat16, jnp.float16)
    return jax.default_backend() == "gpu" and half and q.shape[1] > 1 and d % 8 == 0 and d <= 128


SPLASH_LANES = 128
"""The splash kernel's sequence length is padded to a multiple of this (its smallest tile)."""
SPLASH_MAX_BLOCK = 512
"""Largest query/key tile of the splash kernel; shorter padded lengths use one that divides."""


def _splash_applies(q: jax.Array, k: jax.Array) -> bool:
    """Splash on TPU when queries and keys are the same slots (T == S, more than one)."""
    return jax.default_backend() == "tpu" and 1 < q.shape[1] == k.shape[1]


def splash_segment_ids(mask: jax.Array) -> jax.Array:
    """[B,T] int32 segment ids that re-express a square mask [B,T,T] as `same id & causal`.

    The mask must come from `attention_mask` with the same slots 0..T-1 on both sides (no
    cache, or a prefill filling the whole cache): query i attends key j iff seg[i] == seg[j]
    and j <= i. The first key a query attends is then the first slot holding its segment, so
    that slot's index names the segment: equal ids exactly where the segments are equal, and
    `ids[i] == ids[j] & j <= i` is the mask again (every query attends at least itself).
    """
    return jnp.argmax(mask, axis=-1).astype(jnp.int32)


def attend_splash(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *,
                  interpret: bool = False) -> jax.Array:
    """`attend` through the Pallas splash kernel: q [B,T,H,D], k/v [B,T,K,D], mask [B,T,T].

    The kernel gets the mask as segment ids (`splash_segment_ids`) and its static causal
    mask, so the mask rule stays `attention_mask`'s. The length is padded to a multiple of
    SPLASH_LANES with a segment id no real slot has (padding attends only padding; its
    output is dropped). Query heads are scaled here (the kernel does not scale) and grouped
    onto their KV heads by the kernel. Under a mesh the kernel runs per shard (`shard_map`):
    rows split over the batch axes, heads over `tensor` when the KV heads divide. `interpret`
    runs the kernel in Pallas's interpreter on any backend (tests).
    """
    from jax.experimental.pallas.ops.tpu import (
        splash_attention as splash,  # TPU runs only
    )

    b, t, h, d = q.shape
    length = -(-t // SPLASH_LANES) * SPLASH_LANES
    block = math.gcd(length, SPLASH_MAX_BLOCK)
    ids = jnp.pad(splash_segment_ids(mask), ((0, 0), (0, length - t)), constant_values=t)

    def heads_first(x):  # [B,T,N,D] -> [B,N,length,D]
        return jnp.pad(x, ((0, 0), (0, length - t), (0, 0), (0, 0))).transpose(0, 2, 1, 3)

    kernel = splash.make_splash_mha_single_device(
        splash.MultiHeadMask([splash.CausalMask((length, length))] * h),
        block_sizes=splash.BlockSizes(
            block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
            block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block,
        ),
        interpret=interpret,
    )

    def run(q, k, v, ids):
        segments = splash.SegmentIds(q=ids, kv=ids)
        return jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids=s))(q, k, v, segments)

    args = (heads_first(q * jnp.asarray(d**-0.5, q.dtype)), heads_first(k), heads_first(v), ids)
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and mesh.size > 1:
        spec = fit_spec(logical_to_spec(("batch", "kv_heads")), args[1].shape[:2],
                        dict(mesh.shape))
        rows = jax.sharding.PartitionSpec(spec[0])
        run = jax.shard_map(run, mesh=mesh, in_specs=(spec, spec, spec, rows), out_specs=spec,
                            check_vma=False)
    return run(*args).transpose(0, 2, 1, 3)[:, :t]


def attend_reference(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Grouped-query attention: q [B,T,H,D], k/v [B,S,K,D], mask [B,T,S] -> [B,T,H,D]
    (`attend_heads_first` on the keys and values laid out head-major)."""
    return attend_heads_first(q, k.swapaxes(1, 2), v.swapaxes(1, 2), mask)


def attend_cache(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """`attend` over a head-major KV cache: q [B,T,H,D], k/v [B,K,S,D], mask [B,T,S].

    A one-token decode step reads the cache as it lies (`attend_heads_first`), with no
    transpose of the cache per step; several queries (a prefill) go through `attend`, so they
    keep its kernel dispatch.
    """
    if q.shape[1] == 1:
        return attend_heads_first(q, k, v, mask)
    return attend(q, k.swapaxes(1, 2), v.swapaxes(1, 2), mask)


def attend_heads_first(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Grouped-query attention: q [B,T,H,D], k/v [B,K,S,D], mask [B,T,S] -> [B,T,H,D].

    Each KV head's G = H/K query heads are laid out as one [G*T, D] matrix, so both products
    are plain batched matmuls over (B, K) without repeating keys and values; on XLA:CPU this
    is 1.1-1.7x faster than contracting the five-dimensional layout directly (training and
    decode shapes alike). Scores and softmax run in float32. A fully masked row (a padding
    query) gets a finite uniform distribution instead of NaN; its output is never used.
    """
    b, t, h, d = q.shape
    kv_heads, s = k.shape[1], k.shape[2]
    g = h // kv_heads
    q = q.reshape(b, t, kv_heads, g, d).transpose(0, 2, 3, 1, 4).reshape(b, kv_heads, g * t, d)
    scores = jnp.einsum("bkqd,bksd->bkqs", q, k, preferred_element_type=jnp.float32)
    scores = scores * (d**-0.5)
    allowed = jnp.broadcast_to(mask[:, None, None], (b, 1, g, t, s)).reshape(b, 1, g * t, s)
    scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkqs,bksd->bkqd", probs, v)
    return out.reshape(b, kv_heads, g, t, d).transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)
