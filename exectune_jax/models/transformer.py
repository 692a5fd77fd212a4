"""The guide: one flax.nnx decoder for the Llama, Qwen2 and Qwen3 families.

The three families differ only in small switches (Qwen2: bias on q/k/v; Qwen3: RMSNorm on each
query/key head), so one module with a `ModelConfig` covers them and HF checkpoints map onto it
name for name (see `models/hf.py`). Every parameter carries logical axis names
(`nnx.get_partition_spec(nnx.state(model))` gives them); `parallel.py` maps them onto a mesh,
so building the model never needs one.

Attention masking is one rule for training, packing and the KV cache: a query attends a key
when both carry the same segment id and the key's slot is not after the query's slot. Slots
are array indices (no cache) or cache positions (with a cache; empty cache slots have segment
0). RoPE uses the explicit `positions`, so padding never shifts a token's position.
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
from flax.core import FrozenDict

from exectune_jax.errors import UserError
from exectune_jax.parallel import fit_spec, logical_to_spec, with_logical_constraint

FAMILIES = ("llama", "qwen2", "qwen3")
ROPE_TYPES = ("default", "linear", "llama3")
ACTIVATION_AXES = ("batch", "length", "embed")


class ModelConfigError(UserError):
    """A model config this decoder cannot represent faithfully."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of one decoder; hashable so it can live in an nnx graph definition.

    `rope_scaling` is None for plain RoPE, else the HF scaling parameters including
    `rope_type` ("linear": factor; "llama3": factor, low_freq_factor, high_freq_factor,
    original_max_position_embeddings). `qkv_bias` and `qk_norm` follow from the family when
    left as None (qwen2 has q/k/v bias, qwen3 has per-head q/k norm).
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int | None = None
    rope_theta: float = 10000.0
    rope_scaling: Mapping[str, Any] | None = None
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    qkv_bias: bool | None = None
    qk_norm: bool | None = None
    max_position_embeddings: int = 2048
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.model_type not in FAMILIES:
            raise ModelConfigError(
                f"model_type {self.model_type!r} is not supported; supported: {', '.join(FAMILIES)}"
            )
        family_bias, family_norm = self.model_type == "qwen2", self.model_type == "qwen3"
        for name, expected in (("qkv_bias", family_bias), ("qk_norm", family_norm)):
            value = getattr(self, name)
            if value is None:
                object.__setattr__(self, name, expected)
            elif bool(value) != expected:
                raise ModelConfigError(
                    f"{name}={value} does not match model_type {self.model_type!r} "
                    f"(which has {name}={expected}); leave it unset"
                )
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if self.num_heads % self.num_kv_heads:
            raise ModelConfigError(
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.head_dim % 2:
            raise ModelConfigError(f"head_dim={self.head_dim} must be even for RoPE")
        if isinstance(self.eos_token_id, (list, tuple)):
            object.__setattr__(self, "eos_token_id", tuple(int(i) for i in self.eos_token_id))
        if self.rope_scaling is not None:
            scaling = FrozenDict(dict(self.rope_scaling))
            kind = scaling.get("rope_type")
            if kind not in ROPE_TYPES:
                raise ModelConfigError(
                    f"rope_type {kind!r} is not supported; supported: {', '.join(ROPE_TYPES)}"
                )
            object.__setattr__(self, "rope_scaling", None if kind == "default" else scaling)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        if self.eos_token_id is None:
            return ()
        if isinstance(self.eos_token_id, tuple):
            return self.eos_token_id
        return (self.eos_token_id,)

    @classmethod
    def from_hf(cls, d: Mapping[str, Any]) -> ModelConfig:
        """Reads an HF config.json dict (v5 `rope_parameters` or legacy `rope_scaling`)."""
        model_type = d.get("model_type")
        if model_type not in FAMILIES:
            raise ModelConfigError(
                f"model_type {model_type!r} is not supported; supported: {', '.join(FAMILIES)}"
            )
        _reject_unsupported_hf_features(d)
        theta, scaling = _rope_from_hf(d)
        return cls(
            model_type=model_type,
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_layers=d["num_hidden_layers"],
            num_heads=d["num_attention_heads"],
            num_kv_heads=d.get("num_key_value_heads") or d["num_attention_heads"],
            head_dim=d.get("head_dim") or d["hidden_size"] // d["num_attention_heads"],
            rope_theta=float(theta),
            rope_scaling=scaling,
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=d.get("eos_token_id"),
            pad_token_id=d.get("pad_token_id"),
        )

    def to_hf(self) -> dict[str, Any]:
        """An HF config.json dict in the v5 layout (`rope_parameters`)."""
        rope = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling is not None:
            rope.update(dict(self.rope_scaling))
        eos = list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id
        d: dict[str, Any] = {
            "architectures": [_ARCHITECTURES[self.model_type]],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_parameters": rope,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "pad_token_id": self.pad_token_id,
            "attention_dropout": 0.0,
            "use_cache": True,
        }
        if self.model_type in ("llama", "qwen3"):
            d["attention_bias"] = False
        if self.model_type == "llama":
            d["mlp_bias"] = False
        if self.model_type in ("qwen2", "qwen3"):
            d["use_sliding_window"] = False
            d["sliding_window"] = None
            d["layer_types"] = ["full_attention"] * self.num_layers
        return d


_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}


def _reject_unsupported_hf_features(d: Mapping[str, Any]) -> None:
    """Refuses configs whose numerics this decoder would silently get wrong."""
    if d.get("hidden_act", "silu") != "silu":
        raise ModelConfigError(f"hidden_act {d['hidden_act']!r} is not supported; only 'silu'")
    if d.get("attention_bias") or d.get("mlp_bias"):
        raise ModelConfigError(
            f"attention_bias/mlp_bias=true is not supported for model_type {d['model_type']!r}"
        )
    if d.get("use_sliding_window") or "sliding_attention" in (d.get("layer_types") or ()):
        raise ModelConfigError(
            "sliding-window attention is not supported; set use_sliding_window=false"
        )


def _rope_from_hf(d: Mapping[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, scaling params or None) from either the v5 or the legacy config layout."""
    params = {**(d.get("rope_scaling") or {}), **(d.get("rope_parameters") or {})}
    theta = params.pop("rope_theta", d.get("rope_theta", 10000.0))
    kind = params.pop("rope_type", None) or params.pop("type", None) or "default"
    params.pop("type", None)
    if params.pop("partial_rotary_factor", 1.0) != 1.0:
        raise ModelConfigError("partial_rotary_factor != 1 is not supported")
    if kind == "default":
        return theta, None
    if kind == "llama3":
        params.setdefault(
            "original_max_position_embeddings", d.get("max_position_embeddings", 2048)
        )
    return theta, {"rope_type": kind, **params}


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
    from jax.experimental.pallas.ops.tpu import splash_attention as splash  # TPU runs only

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
    """Grouped-query attention: q [B,T,H,D], k/v [B,S,K,D], mask [B,T,S] -> [B,T,H,D].

    Each KV head's G = H/K query heads are laid out as one [G*T, D] matrix, so both products
    are plain batched matmuls over (B, K) without repeating keys and values; on XLA:CPU this
    is 1.1-1.7x faster than contracting the five-dimensional layout directly (training and
    decode shapes alike). Scores and softmax run in float32. A fully masked row (a padding
    query) gets a finite uniform distribution instead of NaN; its output is never used.
    """
    b, t, h, d = q.shape
    s, kv_heads = k.shape[1], k.shape[2]
    g = h // kv_heads
    q = q.reshape(b, t, kv_heads, g, d).transpose(0, 2, 3, 1, 4).reshape(b, kv_heads, g * t, d)
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    scores = jnp.einsum("bkqd,bksd->bkqs", q, k, preferred_element_type=jnp.float32)
    scores = scores * (d**-0.5)
    allowed = jnp.broadcast_to(mask[:, None, None], (b, 1, g, t, s)).reshape(b, 1, g * t, s)
    scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkqs,bksd->bkqd", probs, v)
    return out.reshape(b, kv_heads, g, t, d).transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)


# ---------------------------------------------------------------------------------------------
# KV cache


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """Keys/values of every layer, stacked, plus which slots hold which segment.

    All rows write at the same slot (`index`), so prompts are left-padded by the sampler; a
    padding slot keeps segment 0 and is never attended by real tokens.
    """

    k: jax.Array  # [layers, B, S, K, D]
    v: jax.Array
    segment_ids: jax.Array  # [B, S] int32, 0 = empty or padding
    index: jax.Array  # int32 scalar: the next slot to write

    @property
    def max_len(self) -> int:
        return self.segment_ids.shape[1]


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=jnp.float32) -> KVCache:
    shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
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

        `cache` is None or (k, v, layer, index): the stacked caches [layers, B, S, K, D] of
        every layer; this layer's new keys are written at [layer, :, index] and it attends
        over its own slice. Writing into the stacked arrays (a scan carry) keeps the update
        in place instead of copying a layer's cache on every decode step. `key`: this layer's
        adapter-dropout randomness (None: no dropout).
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
            start = (layer, 0, index, 0, 0)
            all_k = jax.lax.dynamic_update_slice(all_k, k[None].astype(all_k.dtype), start)
            all_v = jax.lax.dynamic_update_slice(all_v, v[None].astype(all_v.dtype), start)
            k, v = all_k[layer], all_v[layer]
            cache = (all_k, all_v, layer, index)
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
               dropout_key: jax.Array | None = None):
        """(final-normed hidden states [B,T,E], updated cache or None): all but the head.

        `dropout_key` turns on the LoRA adapters' dropout (models/lora.py), one key per layer
        folded from it; None (sampling, log-probs, RL, eval) computes without dropout.
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
        (x, kv), _ = jax.lax.scan(block, (x, kv), (stacked, jnp.arange(self.cfg.num_layers)))
        x = self.final_norm(x)
        if cache is None:
            return x, None
        return x, KVCache(kv[0], kv[1], kv_segments, cache.index + t)

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
