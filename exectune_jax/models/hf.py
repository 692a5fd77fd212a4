"""Hugging Face checkpoint directory <-> our Transformer.

A directory holds config.json, the weights as model.safetensors (or shards listed in
model.safetensors.index.json), and optionally tokenizer files and generation_config.json.
Weights are read with the safetensors numpy API, one tensor at a time, straight into their
final placement, so loading never builds a randomly initialised model first.

The name table below is the whole mapping: HF stores Linear weights as [out, in], we store
kernels as [in, out], hence the transposes. HF keeps one tensor per layer; our blocks are
stacked (a leading layer axis), so layer i's tensor is row i of one stacked array.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from exectune_jax import parallel
from exectune_jax.errors import UserError
from exectune_jax.models.architecture import ModelConfig
from exectune_jax.models.transformer import Transformer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
GENERATION_CONFIG_FILE = "generation_config.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 2**30


class HFCheckpointError(UserError):
    """A checkpoint directory we cannot read: the message names the file and the tensor."""


# ---------------------------------------------------------------------------------------------
# Name table


@dataclass(frozen=True)
class TensorName:
    hf: str  # name in the safetensors file
    path: tuple[str, ...]  # path in nnx.state(model)
    transpose: bool  # HF Linear [out, in] <-> our kernel [in, out]
    layer: int | None = None  # row of the stacked array at `path`; None: not a layer tensor


_LAYER_TENSORS: dict[str, tuple[tuple[str, ...], bool]] = {
    "input_layernorm.weight": (("attn_norm", "scale"), False),
    "self_attn.q_proj.weight": (("attn", "q_proj", "kernel"), True),
    "self_attn.k_proj.weight": (("attn", "k_proj", "kernel"), True),
    "self_attn.v_proj.weight": (("attn", "v_proj", "kernel"), True),
    "self_attn.o_proj.weight": (("attn", "o_proj", "kernel"), True),
    "post_attention_layernorm.weight": (("mlp_norm", "scale"), False),
    "mlp.gate_proj.weight": (("mlp", "gate_proj", "kernel"), True),
    "mlp.up_proj.weight": (("mlp", "up_proj", "kernel"), True),
    "mlp.down_proj.weight": (("mlp", "down_proj", "kernel"), True),
}
"""Per decoder layer, shared by every family: HF name under model.layers.{i}. -> our path."""

_FAMILY_LAYER_TENSORS: dict[str, dict[str, tuple[tuple[str, ...], bool]]] = {
    "llama": {},
    "qwen2": {
        "self_attn.q_proj.bias": (("attn", "q_proj", "bias"), False),
        "self_attn.k_proj.bias": (("attn", "k_proj", "bias"), False),
        "self_attn.v_proj.bias": (("attn", "v_proj", "bias"), False),
    },
    "qwen3": {
        "self_attn.q_norm.weight": (("attn", "q_norm", "scale"), False),
        "self_attn.k_norm.weight": (("attn", "k_norm", "scale"), False),
    },
}


def tensor_names(cfg: ModelConfig) -> list[TensorName]:
    """Every tensor a checkpoint of this config must hold (lm_head only when untied)."""
    names = [TensorName("model.embed_tokens.weight", ("embed",), False)]
    layer_table = {**_LAYER_TENSORS, **_FAMILY_LAYER_TENSORS[cfg.model_type]}
    for i in range(cfg.num_layers):
        for hf, (path, transpose) in layer_table.items():
            names.append(TensorName(f"model.layers.{i}.{hf}", ("layers", *path), transpose, i))
    names.append(TensorName("model.norm.weight", ("final_norm", "scale"), False))
    if not cfg.tie_word_embeddings:
        names.append(TensorName("lm_head.weight", ("lm_head",), True))
    return names


# ---------------------------------------------------------------------------------------------
# Load


def read_config(path: str | os.PathLike) -> ModelConfig:
    file = Path(path) / CONFIG_FILE
    if not file.is_file():
        raise HFCheckpointError(f"{file}: not found; an HF model directory needs {CONFIG_FILE}")
    try:
        raw = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise HFCheckpointError(f"{file}: invalid JSON at line {e.lineno}: {e.msg}") from None
    try:
        return ModelConfig.from_hf(raw)
    except KeyError as e:
        raise HFCheckpointError(f"{file}: missing field {e.args[0]!r}") from None
    except UserError as e:
        raise HFCheckpointError(f"{file}: {e}") from None


def load(
    path: str | os.PathLike,
    *,
    mesh: jax.sharding.Mesh | None = None,
    dtype=jnp.float32,
    compute_dtype=None,
    remat: str = "none",
) -> tuple[Transformer, ModelConfig]:
    """Reads an HF directory into a Transformer with parameters in `dtype`.

    With `mesh`, each tensor goes straight to its sharding from parallel.LOGICAL_RULES.
    `compute_dtype` (default: `dtype`) is the activation dtype, e.g. bfloat16; `remat` the
    Transformer's rematerialisation policy.
    """
    path = Path(path)
    cfg = read_config(path)
    abstract = nnx.eval_shape(
        lambda: Transformer(
            cfg, rngs=nnx.Rngs(0), dtype=compute_dtype or dtype, param_dtype=dtype, remat=remat
        )
    )
    graphdef, state = nnx.split(abstract)
    shardings = None if mesh is None else nnx.to_flat_state(parallel.state_shardings(state, mesh))
    shardings = None if shardings is None else {p: v.get_value() for p, v in shardings}
    flat = dict(nnx.to_flat_state(state))
    groups: dict[tuple[str, ...], list[TensorName]] = {}
    for name in tensor_names(cfg):
        groups.setdefault(name.path, []).append(name)
    with _CheckpointReader(path) as reader:
        # One stacked array at a time: host memory holds at most one parameter's layers.
        for target, names in groups.items():
            var = flat[target]
            shape = var.get_value().shape
            expected = shape if names[0].layer is None else shape[1:]
            arrays = [_read_checked(reader, name, expected, path).astype(dtype) for name in names]
            array = arrays[0] if names[0].layer is None else np.stack(arrays)
            del arrays
            flat[target] = var.replace(_place(array, shardings, target))
    return nnx.merge(graphdef, nnx.from_flat_state(flat)), cfg


def _read_checked(reader, name: TensorName, expected: tuple, path: Path) -> np.ndarray:
    """One HF tensor in our orientation, or an error naming the file, tensor and shapes."""
    array = reader.read(name.hf)
    if name.transpose:
        array = array.T
    if array.shape != expected:
        raise HFCheckpointError(
            f"{reader.file_of(name.hf)}: tensor {name.hf!r} has shape "
            f"{tuple(reversed(array.shape)) if name.transpose else array.shape}, but "
            f"{path / CONFIG_FILE} implies "
            f"{tuple(reversed(expected)) if name.transpose else expected}"
        )
    return array


def _place(array: np.ndarray, shardings: Mapping | None, path: tuple) -> jax.Array:
    if shardings is None:
        return jnp.asarray(array)
    return jax.device_put(array, shardings[path])


class _CheckpointReader:
    """Opens model.safetensors or the shards of an index; names the file in every error."""

    def __init__(self, path: Path):
        self.path = path
        index = path / INDEX_FILE
        single = path / WEIGHTS_FILE
        if index.is_file():
            self.weight_map = _read_index(index)
        elif single.is_file():
            self.weight_map = None
            self._single = single
        else:
            raise HFCheckpointError(
                f"{path}: no {WEIGHTS_FILE} or {INDEX_FILE}; the weights must be safetensors"
            )
        self._open: dict[Path, Any] = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for handle in self._open.values():
            handle.__exit__(None, None, None)
        self._open.clear()

    def file_of(self, key: str) -> Path:
        if self.weight_map is None:
            return self._single
        if key not in self.weight_map:
            raise HFCheckpointError(
                f"{self.path / INDEX_FILE}: tensor {key!r} is missing from weight_map"
            )
        return self.path / self.weight_map[key]

    def read(self, key: str) -> np.ndarray:
        file = self.file_of(key)
        handle = self._handle(file)
        if key not in handle.keys():
            raise HFCheckpointError(f"{file}: tensor {key!r} is missing")
        try:
            return handle.get_tensor(key)
        except SafetensorError as e:
            raise HFCheckpointError(f"{file}: tensor {key!r} cannot be read ({e})") from None

    def _handle(self, file: Path):
        if file not in self._open:
            if not file.is_file():
                raise HFCheckpointError(f"{file}: not found (listed in {INDEX_FILE})")
            try:
                handle = safe_open(str(file), framework="np")
                handle.__enter__()
            except SafetensorError as e:
                raise HFCheckpointError(_unreadable_message(file, e)) from None
            self._open[file] = handle
        return self._open[file]


def _read_index(index: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except json.JSONDecodeError as e:
        raise HFCheckpointError(f"{index}: invalid JSON at line {e.lineno}: {e.msg}") from None
    except KeyError:
        raise HFCheckpointError(f"{index}: missing field 'weight_map'") from None
    return weight_map


def _unreadable_message(file: Path, error: Exception) -> str:
    key = _first_truncated_tensor(file)
    if key is not None:
        return (
            f"{file}: truncated: tensor {key!r} extends past the end of the file; "
            "re-download or re-export the checkpoint"
        )
    return f"{file}: not a valid safetensors file ({error}); re-download or re-export it"


def _first_truncated_tensor(file: Path) -> str | None:
    """The first tensor whose bytes lie beyond the end of a file with a readable header."""
    size = file.stat().st_size
    try:
        with open(file, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > size - 8:
                return None
            header = json.loads(f.read(header_len))
    except (struct.error, ValueError):
        return None
    body = size - 8 - header_len
    tensors = [(k, v) for k, v in header.items() if k != "__metadata__"]
    for key, info in sorted(tensors, key=lambda kv: kv[1]["data_offsets"][1]):
        if info["data_offsets"][1] > body:
            return key
    return None


# ---------------------------------------------------------------------------------------------
# Save


def save(
    model: Transformer,
    cfg: ModelConfig,
    path: str | os.PathLike,
    tokenizer=None,
    *,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> None:
    """Writes an HF directory that transformers' AutoModelForCausalLM loads.

    Weights keep the model's parameter dtype. Above `max_shard_bytes` the weights are split
    into model-0000i-of-0000n.safetensors with an index. Any weight files of an earlier save in
    `path` are replaced, so the directory never mixes two checkpoints. A model with LoRA
    adapters is refused: save `lora.merged(model)`, or the adapters would be silently dropped.
    """
    if jax.tree.leaves(nnx.state(model, nnx.LoRAParam)):
        raise ValueError("hf.save: the model has LoRA adapters; save models.lora.merged(model)")
    tensors = dict(_hf_tensors(model, cfg))
    if jax.process_index() != 0:
        return
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    dtype = next(iter(tensors.values())).dtype
    config = {**cfg.to_hf(), "dtype": jnp.dtype(dtype).name}
    (path / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    generation = {
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": config["eos_token_id"],
        "pad_token_id": cfg.pad_token_id,
    }
    (path / GENERATION_CONFIG_FILE).write_text(json.dumps(generation, indent=2) + "\n")
    _write_weights(tensors, path, max_shard_bytes)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))


def _hf_tensors(model: Transformer, cfg: ModelConfig) -> Iterator[tuple[str, np.ndarray]]:
    flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    host: dict[tuple[str, ...], np.ndarray] = {}
    for name in tensor_names(cfg):
        if name.path not in host:
            value = flat[name.path].get_value()
            if not value.is_fully_addressable:
                value = multihost_utils.process_allgather(value, tiled=True)
            host[name.path] = np.asarray(jax.device_get(value))
        array = host[name.path] if name.layer is None else host[name.path][name.layer]
        yield name.hf, np.ascontiguousarray(array.T if name.transpose else array)


def _write_weights(tensors: dict[str, np.ndarray], path: Path, max_shard_bytes: int) -> None:
    for stale in [*path.glob("model*.safetensors"), path / INDEX_FILE]:
        stale.unlink(missing_ok=True)
    shards = _split_shards(tensors, max_shard_bytes)
    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(path / WEIGHTS_FILE), metadata=metadata)
        return
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path / file), metadata=metadata)
        weight_map.update(dict.fromkeys(shard, file))
    index = {
        "metadata": {"total_size": sum(a.nbytes for a in tensors.values())},
        "weight_map": weight_map,
    }
    (path / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def _split_shards(tensors: dict[str, np.ndarray], max_bytes: int) -> list[dict[str, np.ndarray]]:
    """Greedy split in table order; a tensor larger than max_bytes gets a shard of its own."""
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, array in tensors.items():
        if shards[-1] and size + array.nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = array
        size += array.nbytes
    return shards
