"""The decoder's architecture: which HF families and settings the guide represents, read from
and written to an HF config.json (`ModelConfig.from_hf` / `to_hf`), refusing what it would get
wrong (another activation, biases, sliding windows, partial rotary)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from flax.core import FrozenDict

from exectune_jax.errors import UserError

FAMILIES = ("llama", "qwen2", "qwen3")
ROPE_TYPES = ("default", "linear", "llama3")



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
