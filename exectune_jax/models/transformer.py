"""The guide: one flax.nnx decoder for the Llama, Qwen2 and Qwen3 families.

The three families differ only in small switches (Qwen2: bias on q/k/v; Qwen3: RMSNorm on each
query/key head), so one module with a `ModelConfig` (`models/architecture.py`) covers them and
HF checkpoints map onto it name for name (see `models/hf.py`). Every parameter carries logical
axis names (`nnx.get_partition_spec(nnx.state(model))` gives them); `parallel.py` maps them onto
a mesh, so building the model never needs one. Attention and its mask rule live in
`models/attention.py`. RoPE uses the explicit `positions`, so padding never shifts a token's
position.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from exectune_jax.models.architecture import ModelConfig, ModelConfigError
from exectune_jax.models.attention import attend, attend_cache, attention_mask
from exectune_jax.parallel import with_logical_constraint

ACTIVATION_AXES = ("batch", "length", "embed")


# ---------------------------------------------------------------------------------------------
# Pure math


def rope_inverse_frequencies(cfg: ModelConfig) -> np.ndarray:
    """Per-pair rotation frequencies [head_dim/2], float32, exactly as HF computes them."""
    dim = cfg.head_dim
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    inv_freq = (1.0 / (np.float32(cfg.rope_theta) ** exponents)).astype(np.float32)
    scaling = cfg.rope_scaling
    if scaling is None:
        return inv_freq
    if scaling["rope_type"] == "linear":
        return (inv_freq / np.float32(scaling["factor"])).astype(np.float32)
    return _llama3_frequencies(inv_freq, scaling)


def _llama3_frequencies(inv_freq: np.ndarray, s: Mapping[str, Any]) -> np.ndarray:
    """Llama 3.1 scaling: long wavelengths slowed by `factor`, short kept, middle interpolated."""
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_len = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """Rotates x [B,T,H,D] by positions [B,T] (HF's rotate-half layout)."""
    angles = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)
    cos = jnp.cos(angles)[:, :, None, :].astype(x.dtype)
    sin = jnp.sin(angles)[:, :, None, :].astype(x.dtype)
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


# ---------------------------------------------------------------------------------------------
# KV cache


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """Keys/values of every layer, stacked, plus which slots hold which segment.

    All rows write at the same slot (`index`), so prompts are left-padded by the sampler; a
    padding slot keeps segment 0 and is never attended by real tokens. Keys and values are
    head-major, so a decode step reads a layer's cache as attention wants it, without a copy.
    """

    k: jax.Array  # [layers, B, K, S, D]
    v: jax.Array
    segment_ids: jax.Array  # [B, S] int32, 0 = empty or padding
    index: jax.Array  # int32 scalar: the next slot to write

    @property
    def max_len(self) -> int:
        return self.segment_ids.shape[1]


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=jnp.float32) -> KVCache:
    shape = (cfg.num_layers, batch, cfg.num_kv_heads, max_len, cfg.head_dim)
    return KVCache(
        k=jnp.zeros(shape, dtype),
        v=jnp.zeros(shape, dtype),
        segment_ids=jnp.zeros((batch, max_len), jnp.int32),
        index=jnp.zeros((), jnp.int32),
    )


# ---------------------------------------------------------------------------------------------
# Modules


def _param(value: jax.Array, axes: tuple[str, ...]) -> nnx.Param:
    """A parameter annotated with logical axes only; placement is parallel.py's job."""
    return nnx.Param(value, out_sharding=axes, eager_sharding=False)


_normal = nnx.initializers.normal(0.02)


class Linear(nnx.Module):
    def __init__(self, d_in, d_out, axes, *, bias: bool, rngs: nnx.Rngs, param_dtype):
        self.kernel = _param(_normal(rngs.params(), (d_in, d_out), param_dtype), axes)
        self.bias = _param(jnp.zeros((d_out,), param_dtype), axes[1:]) if bias else None

    def __call__(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """x @ kernel (+ bias). `key`: randomness for an adapter's dropout; a plain projection
        has none to use."""
        del key
        y = x @ self.kernel[...].astype(x.dtype)
        if self.bias is not None:
            y = y + self.bias[...].astype(x.dtype)
        return y


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, *, param_dtype):
        self.scale = _param(jnp.ones((dim,), param_dtype), ("norm",))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.scale[...].astype(x.dtype) * normed.astype(x.dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, param_dtype):
        e, h, kv, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = h, kv, d
        kw = dict(rngs=rngs, param_dtype=param_dtype)
        self.q_proj = Linear(e, h * d, ("embed", "heads"), bias=cfg.qkv_bias, **kw)
        self.k_proj = Linear(e, kv * d, ("embed", "kv_heads"), bias=cfg.qkv_bias, **kw)
        self.v_proj = Linear(e, kv * d, ("embed", "kv_heads"), bias=cfg.qkv_bias, **kw)
        self.o_proj = Linear(h * d, e, ("heads", "embed"), bias=False, **kw)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(d, cfg.rms_norm_eps, param_dtype=param_dtype)
            self.k_norm = RMSNorm(d, cfg.rms_norm_eps, param_dtype=param_dtype)
        else:
            self.q_norm = self.k_norm = None

    def __call__(self, x, positions, mask, inv_freq, cache, key=None):
        """Returns (output, cache).

        `cache` is None or (k, v, layer, index): the stacked head-major caches
        [layers, B, K, S, D] of every layer; this layer's new keys are written at
        [layer, :, :, index] and it attends over its own slice. Writing into the stacked
        arrays (a scan carry) keeps the update in place instead of copying a layer's cache on
        every decode step. `key`: this layer's adapter-dropout randomness (None: no dropout).
        """
        b, t, _ = x.shape
        q = self.q_proj(x, key).reshape(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x, key).reshape(b, t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x, key).reshape(b, t, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)
        if cache is not None:
            all_k, all_v, layer, index = cache
            start = (layer, 0, 0, index, 0)
            new_k, new_v = (x.swapaxes(1, 2)[None].astype(all_k.dtype) for x in (k, v))
            all_k = jax.lax.dynamic_update_slice(all_k, new_k, start)
            all_v = jax.lax.dynamic_update_slice(all_v, new_v, start)
            cache = (all_k, all_v, layer, index)
            out = attend_cache(q, all_k[layer].astype(q.dtype), all_v[layer].astype(q.dtype),
                               mask)
        else:
            out = attend(q, k.astype(q.dtype), v.astype(q.dtype), mask)
        return self.o_proj(out.reshape(b, t, -1), key), cache


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, param_dtype):
        e, m = cfg.hidden_size, cfg.intermediate_size
        kw = dict(bias=False, rngs=rngs, param_dtype=param_dtype)
        self.gate_proj = Linear(e, m, ("embed", "mlp"), **kw)
        self.up_proj = Linear(e, m, ("embed", "mlp"), **kw)
        self.down_proj = Linear(m, e, ("mlp", "embed"), **kw)

    def __call__(self, x, key=None):
        return self.down_proj(jax.nn.silu(self.gate_proj(x, key)) * self.up_proj(x, key), key)


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, param_dtype):
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype)
        self.attn = Attention(cfg, rngs=rngs, param_dtype=param_dtype)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype)
        self.mlp = MLP(cfg, rngs=rngs, param_dtype=param_dtype)

    def __call__(self, x, positions, mask, inv_freq, cache, key=None):
        h, cache = self.attn(self.attn_norm(x), positions, mask, inv_freq, cache, key)
        x = with_logical_constraint(x + h, ACTIVATION_AXES)
        x = with_logical_constraint(x + self.mlp(self.mlp_norm(x), key), ACTIVATION_AXES)
        return x, cache


REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
"""`model.remat`: what the backward pass keeps of each block. none: everything (fastest, most
memory); full: only each block's input, the block is recomputed; save_dots: the projection
matmuls' outputs, everything else recomputed."""


def stacked_blocks(cfg: ModelConfig, rngs: nnx.Rngs, param_dtype) -> Block:
    """One Block whose parameters carry a leading layer axis (logical axis `layers`)."""

    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make(rngs):
        return Block(cfg, rngs=rngs, param_dtype=param_dtype)

    return make(rngs)


class Transformer(nnx.Module):
    """Decoder: embed -> N x (attention, SwiGLU MLP) -> RMSNorm -> logits (float32).

    The N blocks are one stacked Block run by one `lax.scan`, so compile time and the program
    do not grow with depth. `dtype` is the compute dtype (e.g. bfloat16); parameters are stored
    in `param_dtype`; `remat` is a key of REMAT_POLICIES.
    """

    def __init__(
        self, cfg: ModelConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32,
        remat: str = "none",
    ):
        if remat not in REMAT_POLICIES:
            raise ModelConfigError(
                f"remat {remat!r} is not supported; supported: {', '.join(REMAT_POLICIES)}"
            )
        self.cfg = cfg
        self.dtype = dtype
        self.remat = remat
        e, vocab = cfg.hidden_size, cfg.vocab_size
        self.embed = _param(_normal(rngs.params(), (vocab, e), param_dtype), ("vocab", "embed"))
        self.layers = stacked_blocks(cfg, rngs, param_dtype)
        self.final_norm = RMSNorm(e, cfg.rms_norm_eps, param_dtype=param_dtype)
        if cfg.tie_word_embeddings:
            self.lm_head = None
        else:
            head = _normal(rngs.params(), (e, vocab), param_dtype)
            self.lm_head = _param(head, ("embed", "vocab"))

    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        *,
        segment_ids: jax.Array | None = None,
        cache: KVCache | None = None,
    ):
        """logits [B,T,V] for tokens [B,T] at positions [B,T]; (logits, cache) when cache is given.

        segment_ids [B,T] (default all ones) keeps packed sequences from attending each other.
        """
        x, cache = self.hidden(tokens, positions, segment_ids=segment_ids, cache=cache)
        logits = self.logits(x)
        return logits if cache is None else (logits, cache)

    def hidden(self, tokens, positions, *, segment_ids=None, cache: KVCache | None = None,
               dropout_key: jax.Array | None = None, layers: list | None = None):
        """(final-normed hidden states [B,T,E], updated cache or None): all but the head.

        `dropout_key` turns on the LoRA adapters' dropout (models/lora.py), one key per layer
        folded from it; None (sampling, log-probs, RL, eval) computes without dropout.
        `layers` (from `layer_weights`) runs the blocks one after another on those per-layer
        arrays instead of scanning the stacked ones: a scan slices (copies) every layer's
        weights out of the stack on each call, which a decode loop would pay on every token.
        """
        t = tokens.shape[1]
        if segment_ids is None:
            segment_ids = jnp.ones_like(tokens, dtype=jnp.int32)
        segment_ids = segment_ids.astype(jnp.int32)
        if cache is None:
            slots = jnp.arange(t)
            mask = attention_mask(segment_ids, slots, segment_ids, slots)
        else:
            kv_segments = jax.lax.dynamic_update_slice(
                cache.segment_ids, segment_ids, (0, cache.index)
            )
            mask = attention_mask(
                segment_ids, cache.index + jnp.arange(t), kv_segments, jnp.arange(cache.max_len)
            )
        inv_freq = rope_inverse_frequencies(self.cfg)
        x = jnp.take(self.embed[...], tokens, axis=0).astype(self.dtype)
        x = with_logical_constraint(x, ACTIVATION_AXES)
        block_def, stacked = nnx.split(self.layers)

        def block(carry, xs):
            x, kv = carry
            weights, layer = xs
            layer_cache = None if kv is None else (*kv, layer, cache.index)
            key = None if dropout_key is None else jax.random.fold_in(dropout_key, layer)
            x, layer_cache = nnx.merge(block_def, weights)(x, positions, mask, inv_freq,
                                                           layer_cache, key)
            return (x, None if kv is None else layer_cache[:2]), None

        policy = REMAT_POLICIES[self.remat]
        if policy is not None:
            block = jax.checkpoint(block, policy=policy)
        kv = None if cache is None else (cache.k, cache.v)
        if layers is None:
            (x, kv), _ = jax.lax.scan(block, (x, kv), (stacked, jnp.arange(self.cfg.num_layers)))
        else:
            for layer, weights in enumerate(layers):
                (x, kv), _ = block((x, kv), (weights, layer))
        x = self.final_norm(x)
        if cache is None:
            return x, None
        return x, KVCache(kv[0], kv[1], kv_segments, cache.index + t)

    def layer_weights(self) -> list:
        """Each layer's parameters as arrays of their own, for `hidden(..., layers=...)`."""
        _, stacked = nnx.split(self.layers)
        return [jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(self.cfg.num_layers)]

    def head(self) -> jax.Array:
        """The output projection [E, V] in the compute dtype (the embedding when tied)."""
        head = self.embed[...].T if self.lm_head is None else self.lm_head[...]
        return head.astype(self.dtype)

    def logits(self, x: jax.Array) -> jax.Array:
        """float32 logits [..., V] of final hidden states [..., E]."""
        return project(x, self.head())


def project(x: jax.Array, head: jax.Array) -> jax.Array:
    """float32 logits [..., V] of hidden states [..., E] through head [E, V]."""
    return jnp.einsum("...e,ev->...v", x, head, preferred_element_type=jnp.float32)
