"""LoRA: low-rank adapters on the stacked decoder's projections, the frozen base around them.

`apply` swaps each targeted `Linear` of the stacked block (named as in HF/PEFT: q_proj ...
down_proj) for a `LoraLinear` that keeps the base kernel and adds `x @ A @ B * alpha / r`, with
A [layers, in, r] and B [layers, r, out] carrying the `layers` axis like every stacked weight, so
the one scan slices them per layer. B starts at zero: an adapted model computes exactly its base
until it trains. With `dropout` p > 0 and a dropout key (SFT steps only: `Transformer.hidden`'s
`dropout_key`), each adapter sees its input with entries zeroed at rate p and the rest scaled by
1 / (1 - p), as PEFT's lora_dropout; the base projection always sees the whole input. Adapters
are `nnx.LoRAParam`s (a kind of `nnx.Param`), so `TRAINABLE` selects what an optimizer updates
and a checkpoint saves, and `FROZEN` the base loaded once from its HF directory.

`merged` folds the adapters into the kernels (what `transformers` loads); `save_peft` writes
them as a PEFT adapter directory (adapter_config.json + adapter_model.safetensors) that
`peft.PeftModel.from_pretrained(base, dir)` loads onto the same base.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from safetensors.numpy import save_file

from exectune_jax import parallel
from exectune_jax.models.transformer import Linear, Transformer

TRAINABLE = nnx.LoRAParam
FROZEN = nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))
PARENTS = {"q_proj": "attn", "k_proj": "attn", "v_proj": "attn", "o_proj": "attn",
           "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
HF_PARENTS = {"attn": "self_attn", "mlp": "mlp"}
PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"


class LoraLinear(Linear):
    """A stacked Linear plus its adapter; the kernel and bias are the base's own Variables."""

    def __init__(self, base: Linear, rank: int, alpha: float, key: jax.Array, *,
                 dropout: float = 0.0, salt: int = 0):
        self.kernel, self.bias = base.kernel, base.bias
        layers, d_in, d_out = self.kernel.shape
        layer_axis, in_axis, out_axis = self.kernel.get_metadata()["out_sharding"]
        dtype = self.kernel.dtype
        # PEFT's default: A ~ kaiming-uniform(a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)), B = 0.
        bound = 1.0 / math.sqrt(d_in)
        a = jax.random.uniform(key, (layers, d_in, rank), dtype, -bound, bound)
        self.lora_a = nnx.LoRAParam(a, out_sharding=(layer_axis, in_axis, None),
                                    eager_sharding=False)
        self.lora_b = nnx.LoRAParam(jnp.zeros((layers, rank, d_out), dtype),
                                    out_sharding=(layer_axis, None, out_axis), eager_sharding=False)
        self.scale = alpha / rank
        self.dropout = dropout
        self.salt = salt  # which projection of the layer: its own dropout mask from the layer key

    def __call__(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
        adapter_in = x
        if key is not None and self.dropout > 0:
            keep = jax.random.bernoulli(jax.random.fold_in(key, self.salt), 1.0 - self.dropout,
                                        x.shape)
            adapter_in = jnp.where(keep, x / jnp.asarray(1.0 - self.dropout, x.dtype), 0)
        delta = (adapter_in @ self.lora_a[...].astype(x.dtype)) @ self.lora_b[...].astype(x.dtype)
        return super().__call__(x) + delta * jnp.asarray(self.scale, x.dtype)


def enabled(lora_cfg: Any) -> bool:
    return lora_cfg is not None and lora_cfg.rank > 0


def trainable(lora_cfg: Any):
    """The nnx filter an optimizer updates: the adapters with LoRA on, else every Param."""
    return TRAINABLE if enabled(lora_cfg) else nnx.Param


def apply(model: Transformer, lora_cfg: Any, *, seed: int = 0, mesh=None) -> Transformer:
    """Adds adapters to `model` in place (a no-op when rank is 0); returns it.

    With `mesh`, the new adapter arrays are placed by their logical axes like the base.
    """
    if not enabled(lora_cfg):
        return model
    keys = jax.random.split(jax.random.key(seed), len(lora_cfg.target_modules))
    for key, name in zip(keys, lora_cfg.target_modules, strict=True):
        parent = getattr(model.layers, PARENTS[name])
        setattr(parent, name, LoraLinear(getattr(parent, name), lora_cfg.rank, lora_cfg.alpha,
                                         key, dropout=lora_cfg.dropout,
                                         salt=list(PARENTS).index(name)))
    if mesh is not None:  # placed from host copies, as hf.load places the base (multi-process safe)
        adapters = jax.tree.map(np.asarray, nnx.state(model, TRAINABLE))
        nnx.update(model, jax.device_put(adapters, parallel.state_shardings(adapters, mesh)))
    return model


def adapted(model: Transformer) -> Iterator[tuple[str, str, LoraLinear]]:
    """(parent, module name, LoraLinear) of every adapted projection."""
    for name, parent in PARENTS.items():
        module = getattr(getattr(model.layers, parent), name)
        if isinstance(module, LoraLinear):
            yield parent, name, module


def without_adapters(params: nnx.State) -> nnx.State:
    """The same weights with every B zeroed: the frozen base's function (used as RL reference)."""

    def one(path, x):
        return jnp.zeros_like(x) if any(getattr(k, "key", None) == "lora_b" for k in path) else x

    return jax.tree_util.tree_map_with_path(one, params)


def merged(model: Transformer) -> Transformer:
    """A plain Transformer computing what `model` computes: kernel + A @ B * alpha / r."""
    if not any(True for _ in adapted(model)):
        return model
    kernel = model.layers.attn.q_proj.kernel
    abstract = nnx.eval_shape(lambda: Transformer(
        model.cfg, rngs=nnx.Rngs(0), dtype=model.dtype, param_dtype=kernel.dtype,
        remat=model.remat))
    graphdef, _ = nnx.split(abstract)
    flat = dict(nnx.to_flat_state(nnx.state(model, FROZEN)))
    for parent, name, module in adapted(model):
        delta = jnp.einsum("lir,lro->lio", module.lora_a[...].astype(jnp.float32),
                           module.lora_b[...].astype(jnp.float32)) * module.scale
        var = flat[("layers", parent, name, "kernel")]
        flat[("layers", parent, name, "kernel")] = var.replace(
            (var.get_value().astype(jnp.float32) + delta).astype(var.dtype))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


# ---------------------------------------------------------------------------------------------
# PEFT adapter directory


def peft_tensors(model: Transformer) -> Iterator[tuple[str, np.ndarray]]:
    """PEFT's names and layout: lora_A.weight [r, in], lora_B.weight [out, r] per layer."""
    for parent, name, module in adapted(model):
        a, b = (_host(module.lora_a.get_value()), _host(module.lora_b.get_value()))
        for i in range(a.shape[0]):
            prefix = f"base_model.model.model.layers.{i}.{HF_PARENTS[parent]}.{name}"
            yield f"{prefix}.lora_A.weight", np.ascontiguousarray(a[i].T)
            yield f"{prefix}.lora_B.weight", np.ascontiguousarray(b[i].T)


def peft_config(model: Transformer, base_model: str) -> dict[str, Any]:
    modules = [(name, m) for _, name, m in adapted(model)]
    rank = modules[0][1].lora_a.shape[-1]
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": rank, "lora_alpha": modules[0][1].scale * rank,
        "lora_dropout": modules[0][1].dropout,
        "target_modules": sorted(name for name, _ in modules), "bias": "none",
        "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
        "init_lora_weights": True, "modules_to_save": None, "inference_mode": True,
    }


def save_peft(model: Transformer, path: str | os.PathLike, base_model: str) -> Path:
    """Writes the adapters of `model` as a PEFT directory for `base_model` (its HF dir or id)."""
    tensors = dict(peft_tensors(model))
    path = Path(path)
    if jax.process_index() != 0:
        return path
    path.mkdir(parents=True, exist_ok=True)
    config = peft_config(model, base_model)
    (path / PEFT_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    save_file(tensors, str(path / PEFT_WEIGHTS_FILE), metadata={"format": "pt"})
    return path


def _host(value: jax.Array) -> np.ndarray:
    if not value.is_fully_addressable:
        value = multihost_utils.process_allgather(value, tiled=True)
    return np.asarray(jax.device_get(value))


# ---------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_meta(lora_cfg: Any, base: str | os.PathLike) -> dict[str, Any]:
    """What a checkpoint of adapters needs to be used again: the frozen base and the spec."""
    if not enabled(lora_cfg):
        return {}
    return {"lora": {"base": str(Path(base).resolve()), "rank": lora_cfg.rank,
                     "alpha": lora_cfg.alpha, "dropout": lora_cfg.dropout,
                     "target_modules": list(lora_cfg.target_modules)}}
