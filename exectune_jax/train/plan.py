"""`exectune plan`: compile the RL programs ahead of time and check they fit the accelerator.

Nothing is materialised: weights, optimizer state, reference and batches are
`jax.ShapeDtypeStruct`s carrying the shardings the run would use, each program is
`jax.jit(...).lower(...).compile()`d for the configured mesh, and XLA's memory analysis gives
its per-device footprint. A run holds the policy, the optimizer state and the reference at all
times, so each program's peak is its own buffers (arguments + outputs - donated + temporaries)
plus whatever of that resident state it does not take as an argument. With LoRA
(`model.lora.rank > 0`) the optimizer state covers the adapters only and there is no separate
reference (it is the policy without its adapters), exactly as train/grpo.py holds them.

On a machine without the named accelerator, the mesh is built from simulated CPU devices; the
numbers are then XLA:CPU's buffer assignment for the same sharded programs — an estimate (TPU
layouts pad some dimensions), which is why a plan keeps `HEADROOM` of the memory free.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from exectune_jax import parallel
from exectune_jax.config import Config
from exectune_jax.data.pipeline import BATCH_KEYS
from exectune_jax.errors import UserError
from exectune_jax.models import hf, lora, sampler
from exectune_jax.models.architecture import ModelConfig
from exectune_jax.models.transformer import Transformer, init_cache
from exectune_jax.train import rl_step
from exectune_jax.train.optim import make_optimizer
from exectune_jax.train.sft import base_guide_dir, make_train_step
from exectune_jax.train.warmup import BaseGuideSpec, spec_from_config

GIB = 2**30
HEADROOM = 0.9  # fraction of device memory a plan may use (allocator slack, runtime buffers)

# Architectures a plan can use without the checkpoint on disk (config.json fields only).
KNOWN_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "Qwen/Qwen3-1.7B": {
        "model_type": "qwen3", "vocab_size": 151936, "hidden_size": 2048,
        "intermediate_size": 6144, "num_hidden_layers": 28, "num_attention_heads": 16,
        "num_key_value_heads": 8, "head_dim": 128, "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "max_position_embeddings": 40960,
        "bos_token_id": 151643, "eos_token_id": 151645,
    },
    "Qwen/Qwen2.5-7B-Instruct": {
        "model_type": "qwen2", "vocab_size": 152064, "hidden_size": 3584,
        "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
        "num_key_value_heads": 4, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False, "max_position_embeddings": 32768,
        "bos_token_id": 151643, "eos_token_id": 151645,
    },
}

# name prefix -> (GiB per device, devices per unit of the name's count)
_TPU = {"v4": (32, 0.5), "v5e": (16, 1), "v5p": (95, 0.5), "v6e": (32, 1)}
_GPU = {"h100": 80, "h200": 141, "a100-40gb": 40, "a100-80gb": 80, "a100": 80, "l4": 24,
        "t4": 15}


class PlanError(UserError):
    """The configured run does not fit, or the plan cannot be made; the message says why."""


@dataclass(frozen=True)
class Accelerator:
    name: str
    devices: int
    bytes_per_device: int | None  # None: unknown (no fit check)
    platform: str  # tpu | gpu | cpu


def parse_accelerator(name: str) -> Accelerator:
    """`tpu-v5e-8` (chips; v4/v5p count TensorCores, two per chip), `8xh100`, `1xh200`."""
    key = name.lower()
    if m := re.fullmatch(r"tpu-(v4|v5e|v5p|v6e)-(\d+)", key):
        gib, per = _TPU[m.group(1)]
        devices = max(1, int(int(m.group(2)) * per))
        return Accelerator(name, devices, int(gib * GIB), "tpu")
    if m := re.fullmatch(r"(\d+)x([a-z0-9-]+)", key):
        if m.group(2) in _GPU:
            return Accelerator(name, int(m.group(1)), int(_GPU[m.group(2)] * GIB), "gpu")
    known = "tpu-v5e-8, tpu-v6e-8, tpu-v5p-16, tpu-v4-8, 1xh100, 8xh100, 1xh200, 8xa100-80gb, 1xl4"
    raise PlanError(f"--accelerator {name!r} is not a known accelerator; e.g. {known}")


@dataclass(frozen=True)
class ProgramMemory:
    """Per-device bytes of one compiled program, plus resident state it does not take in."""

    name: str
    arguments: int
    outputs: int
    aliased: int
    temporaries: int
    other_resident: int

    @property
    def total(self) -> int:
        return self.arguments + self.outputs - self.aliased + self.temporaries + self.other_resident


@dataclass(frozen=True)
class Plan:
    accelerator: Accelerator | None
    mesh_shape: Mapping[str, int]
    simulated: bool
    resident: Mapping[str, int]  # per-device bytes: policy, optimizer, reference
    programs: tuple[ProgramMemory, ...]
    capacity: int | None

    @property
    def peak(self) -> ProgramMemory:
        """The program with the largest footprint (resident state alone when none was compiled)."""
        if not self.programs:
            return ProgramMemory("resident state", 0, 0, 0, 0, sum(self.resident.values()))
        return max(self.programs, key=lambda p: p.total)

    @property
    def fits(self) -> bool:
        return self.capacity is None or self.peak.total <= HEADROOM * self.capacity


# ---------------------------------------------------------------------------------------------
# Sizes


def per_device_bytes(tree: Any) -> int:
    """Bytes one device holds of a pytree of sharded ShapeDtypeStructs (its largest shard)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += math.prod(shape) * leaf.dtype.itemsize
    return total


def program_memory(name: str, compiled: Any, other_resident: int) -> ProgramMemory:
    stats = compiled.memory_analysis()
    if stats is None:
        raise PlanError(f"XLA gave no memory analysis for {name} on this backend")
    return ProgramMemory(
        name=name,
        arguments=int(stats.argument_size_in_bytes),
        outputs=int(stats.output_size_in_bytes),
        aliased=int(stats.alias_size_in_bytes),
        temporaries=int(stats.temp_size_in_bytes),
        other_resident=other_resident,
    )


# ---------------------------------------------------------------------------------------------
# Model and abstract state


def model_config(cfg: Config):
    """The guide's architecture: a local HF dir's config.json, a known hub id, or the demo guide."""
    path = cfg.model.path
    if path is None:
        built = base_guide_dir(cfg)
        if (built / "config.json").exists():
            return hf.read_config(built)

        spec: BaseGuideSpec = spec_from_config(cfg)
        return ModelConfig(
            model_type="llama", vocab_size=spec.vocab_size, hidden_size=spec.hidden_size,
            intermediate_size=spec.intermediate_size, num_layers=spec.num_layers,
            num_heads=spec.num_heads, num_kv_heads=spec.num_kv_heads, tie_word_embeddings=True,
            max_position_embeddings=spec.max_position_embeddings, eos_token_id=2, pad_token_id=0,
        )
    if (Path(path) / "config.json").exists():
        return hf.read_config(path)
    known = known_architecture(path)
    if known is not None:
        return ModelConfig.from_hf(known)
    raise PlanError(
        f"config: `model.path` is {path!r}: no config.json there and not a known architecture "
        f"({', '.join(KNOWN_ARCHITECTURES)}); a plan needs only the checkpoint's config.json"
    )


def known_architecture(path: str) -> dict[str, Any] | None:
    """A hub id, or a local path named like one (`models/Qwen3-1.7B`) not downloaded yet."""
    name = Path(path).name.lower()
    for hub_id, fields in KNOWN_ARCHITECTURES.items():
        if path == hub_id or name == hub_id.split("/")[-1].lower():
            return fields
    return None


def _dtype(name: str):
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def _sds(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def abstract_rl_state(cfg: Config, mcfg: Any, mesh: Any):
    """(graphdef, params, opt_state, reference, tx) as sharded ShapeDtypeStructs; no allocation.

    The reference is None with LoRA (the policy without adapters serves as the reference).
    """

    dtype, param_dtype = _dtype(cfg.model.dtype), _dtype(cfg.model.param_dtype)
    with parallel.use_mesh(mesh):
        abstract = nnx.eval_shape(lambda: lora.apply(
            Transformer(mcfg, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype,
                        remat=cfg.model.remat), cfg.model.lora))
    graphdef, params = nnx.split(abstract)
    params = _sds(params, rl_step.tree_shardings(params, mesh))
    tx = make_optimizer(cfg.rl.lr, cfg.rl.steps * cfg.rl.mu, cfg.rl.warmup_steps,
                        cfg.rl.weight_decay, cfg.rl.clip_norm)
    opt = jax.eval_shape(tx.init, nnx.filter_state(params, lora.trainable(cfg.model.lora)))
    opt = _sds(opt, rl_step.tree_shardings(opt, mesh))
    ref = None if lora.enabled(cfg.model.lora) else _compute_copy(params, dtype)
    return graphdef, params, opt, ref, tx


def _compute_copy(params: Any, dtype: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dtype, sharding=x.sharding), params)


# ---------------------------------------------------------------------------------------------
# Programs


def _batch_sds(layout: Any, mesh: Any) -> dict:
    shardings = rl_step.batch_shardings(mesh, layout)
    n, m, L = layout.n_micro, layout.micro, layout.seq_len
    shapes = {
        "tokens": ((n, m, L), jnp.int32), "positions": ((n, m, L), jnp.int32),
        "mask": ((n, m, L - 1), jnp.float32), "old_logp": ((n, m, L - 1), jnp.float32),
        "advantages": ((n, m), jnp.float32),
    }
    return {k: jax.ShapeDtypeStruct(s, d, sharding=shardings[k]) for k, (s, d) in shapes.items()}


def resident_state(cfg: Config, mcfg: Any, mesh: Any) -> dict[str, int]:
    """Per-device bytes of the state a run holds throughout, from shapes alone (no compile)."""
    _, params, opt, ref, _ = abstract_rl_state(cfg, mcfg, mesh)
    return {
        "policy": per_device_bytes(params),
        "optimizer": per_device_bytes(opt),
        "reference": per_device_bytes(ref),
    }


def sft_program(cfg: Config, mcfg: Any, mesh: Any) -> tuple[str, Callable[[], Any], int]:
    """The SFT step at `sft.batch_size` x `sft.seq_len` on the same mesh, as train/sft.py runs it:
    the split (model, optimizer) state donated and returned. SFT is its own process, so nothing
    else is resident beside it."""

    sc = cfg.sft
    wrt = lora.trainable(cfg.model.lora)
    tx = make_optimizer(sc.lr, sc.steps, sc.warmup_steps, sc.weight_decay, sc.clip_norm,
                        grad_accum=sc.grad_accum)

    def build():
        model = lora.apply(Transformer(mcfg, rngs=nnx.Rngs(0), dtype=_dtype(cfg.model.dtype),
                                       param_dtype=_dtype(cfg.model.param_dtype),
                                       remat=cfg.model.remat), cfg.model.lora)
        return model, nnx.Optimizer(model, tx, wrt=wrt)

    with parallel.use_mesh(mesh):
        graphdef, state = nnx.split(nnx.eval_shape(build))
    shardings = parallel.state_shardings(state, mesh)
    state = _sds(state, shardings)
    rows = parallel.batch_sharding(mesh)
    batch = {k: jax.ShapeDtypeStruct((sc.batch_size, sc.seq_len), jnp.int32, sharding=rows)
             for k in BATCH_KEYS}
    step = make_train_step(graphdef, shardings, wrt, head_chunk=cfg.model.head_chunk)
    return "SFT step", lambda: step.lower(state, batch), 0


def compile_programs(cfg: Config, mcfg: Any, mesh: Any) -> tuple[dict[str, int], list[ProgramMemory]]:
    """Compile sampler prefill + decode, reference log-probs, the GRPO update and the SFT step;
    measure each."""

    graphdef, params, opt, ref, tx = abstract_rl_state(cfg, mcfg, mesh)
    resident = resident_state(cfg, mcfg, mesh)
    rows = cfg.rl.prompts_per_step * cfg.rl.group_size
    layout = rl_step.make_layout(rows, cfg.rl.micro_batch, cfg.model.max_seq_len)
    batch = _batch_sds(layout, mesh)
    logp = jax.ShapeDtypeStruct(batch["mask"].shape, jnp.float32, sharding=batch["mask"].sharding)

    def row_sharded(shape, dtype):
        spec = parallel.fit_spec(PartitionSpec(parallel.BATCH_AXES), shape, dict(mesh.shape))
        return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))

    gen_len = sampler._bucket(cfg.rl.max_new_tokens)
    width = sampler._bucket(max(1, cfg.model.max_seq_len - cfg.rl.max_new_tokens))
    srows = 1 << (rows - 1).bit_length()
    prompt = [row_sharded((srows, width), jnp.int32) for _ in range(3)]
    compute = _dtype(cfg.model.dtype)
    cache = jax.eval_shape(lambda: init_cache(mcfg, srows, width + gen_len, compute))

    def layer_rows_sharded(x):  # stacked [layers, rows, ...]: the rows split like a batch
        spec = parallel.fit_spec(PartitionSpec(None, parallel.BATCH_AXES), x.shape, dict(mesh.shape))
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, spec))

    cache = dataclasses.replace(
        cache, k=layer_rows_sharded(cache.k), v=layer_rows_sharded(cache.v),
        segment_ids=row_sharded(cache.segment_ids.shape, cache.segment_ids.dtype),
        index=jax.ShapeDtypeStruct((), cache.index.dtype, sharding=NamedSharding(mesh, PartitionSpec())),
    )
    scalar = lambda d: jax.ShapeDtypeStruct((), d)  # noqa: E731
    key = jax.eval_shape(lambda: jax.random.key(0))
    stops = jax.ShapeDtypeStruct((2, 8), jnp.int32)
    # The sampler runs on a compute-dtype copy of the policy (numerically identical: every
    # layer casts its weights to the compute dtype anyway) next to the resident state.
    sampling = _compute_copy(params, compute)
    rest = resident["optimizer"] + resident["reference"]
    if cfg.model.dtype != cfg.model.param_dtype:
        rest += resident["policy"]

    if ref is None:  # LoRA: the reference is the policy itself with its adapters zeroed
        reference_program = ("reference log-probs", lambda: rl_step.make_logprob_fn(
            graphdef, lora.without_adapters, head_chunk=cfg.model.head_chunk).lower(params, batch),
            resident["optimizer"])
    else:
        reference_program = ("reference log-probs", lambda: rl_step.make_logprob_fn(
            graphdef, head_chunk=cfg.model.head_chunk).lower(ref, batch),
            resident["policy"] + resident["optimizer"])
    programs: list[tuple[str, Callable[[], Any], int]] = [
        ("sample: prefill", lambda: sampler._prefill.lower(
            graphdef, sampling, *prompt, cache_len=width + gen_len), rest),
        ("sample: decode", lambda: sampler._decode.lower(
            graphdef, sampling, cache, row_sharded((srows, mcfg.vocab_size), jnp.float32),
            row_sharded((srows,), jnp.int32), key, scalar(jnp.int32), scalar(jnp.float32),
            scalar(jnp.float32), scalar(jnp.int32), stops, pad_id=0, gen_len=gen_len,
            filtered=False), rest),
        reference_program,
        ("GRPO update", lambda: rl_step.make_train_step(
            graphdef, tx, clip_eps=cfg.rl.clip_eps, beta=cfg.rl.beta,
            wrt=lora.trainable(cfg.model.lora),
            head_chunk=cfg.model.head_chunk).lower(params, opt, batch, logp),
         resident["reference"]),
        sft_program(cfg, mcfg, mesh),
    ]
    out = []
    with parallel.use_mesh(mesh):
        for name, lower, other in programs:
            out.append(program_memory(name, lower().compile(), other))
    return resident, out


# ---------------------------------------------------------------------------------------------
# Devices and the command


def plan_devices(accelerator: Accelerator | None):
    """Real devices when they match the accelerator, else simulated CPU devices (or an error)."""
    if accelerator is None:
        return jax.devices(), False
    if accelerator.platform != "cpu":
        try:
            jax.config.update("jax_num_cpu_devices", accelerator.devices)
        except RuntimeError:
            pass  # backends already started; use what exists
    real = [d for d in jax.devices() if d.platform == accelerator.platform]
    if len(real) >= accelerator.devices:
        return real[: accelerator.devices], False
    cpus = jax.devices("cpu")
    if len(cpus) < accelerator.devices:
        raise PlanError(
            f"planning for {accelerator.name} needs {accelerator.devices} devices but JAX started "
            f"with {len(cpus)} CPU devices; run `exectune plan` in a fresh process, or set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={accelerator.devices}"
        )
    return cpus[: accelerator.devices], True


def _capacity(accelerator: Accelerator | None, devices: list) -> int | None:
    if accelerator is not None:
        return accelerator.bytes_per_device
    stats = devices[0].memory_stats() if hasattr(devices[0], "memory_stats") else None
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def make_plan(cfg: Config, accelerator: str | None = None) -> Plan:
    acc = parse_accelerator(accelerator) if accelerator else None
    devices, simulated = plan_devices(acc)
    mesh = parallel.make_mesh(cfg.mesh, devices=devices)
    mcfg = model_config(cfg)
    capacity = _capacity(acc, devices)
    resident = resident_state(cfg, mcfg, mesh)
    if capacity is not None and sum(resident.values()) > HEADROOM * capacity:
        # Nothing can fit; say so at once instead of compiling programs for minutes.
        return Plan(acc, dict(mesh.shape), simulated, resident, (), capacity)
    resident, programs = compile_programs(cfg, mcfg, mesh)
    return Plan(acc, dict(mesh.shape), simulated, resident, tuple(programs), capacity)


def _gib(n: int) -> str:
    """Bytes in GiB, or MiB below one GiB (tiny models would print only zeros)."""
    return f"{n / GIB:7.2f} GiB" if n >= GIB else f"{n / 2**20:7.1f} MiB"


def report(plan: Plan, cfg: Config) -> str:
    where = plan.accelerator.name if plan.accelerator else "the local devices"
    how = " (simulated on CPU devices)" if plan.simulated else ""
    mesh = ", ".join(f"{k}={v}" for k, v in plan.mesh_shape.items())
    lines = [
        f"plan for {where}{how}: mesh {mesh}; G={cfg.rl.group_size} x "
        f"{cfg.rl.prompts_per_step} prompts, {cfg.rl.max_new_tokens} new tokens, "
        f"seq_len {cfg.model.max_seq_len}, micro_batch {cfg.rl.micro_batch}, "
        f"compute {cfg.model.dtype}, params {cfg.model.param_dtype}; SFT "
        f"{cfg.sft.batch_size} x {cfg.sft.seq_len}",
        "resident per device:",
        *(f"  {k:<22}{_gib(v)}" for k, v in plan.resident.items()),
        "programs per device (args + outputs - donated + temporaries + other resident = total):",
    ]
    if not plan.programs:
        lines.append("  (not compiled: the resident state alone exceeds the usable memory)")
    for p in plan.programs:
        lines.append(
            f"  {p.name:<22}{_gib(p.arguments)} +{_gib(p.outputs)} -{_gib(p.aliased)} "
            f"+{_gib(p.temporaries)} +{_gib(p.other_resident)} = {_gib(p.total)}"
        )
    peak = plan.peak
    if plan.capacity is None:
        lines.append(f"peak per device: {_gib(peak.total).strip()} ({peak.name}); capacity unknown")
    else:
        verdict = "fits" if plan.fits else "DOES NOT FIT"
        lines.append(
            f"peak per device: {_gib(peak.total).strip()} ({peak.name}) of "
            f"{_gib(plan.capacity).strip()} ({int(HEADROOM * 100)}% usable): {verdict}"
        )
    return "\n".join(lines)


def misfit_message(plan: Plan) -> str:
    """Which programs do not fit, what dominates them, and which knobs move them."""
    limit = HEADROOM * plan.capacity
    over = [p for p in plan.programs if p.total > limit]
    parts = []
    if not plan.programs:
        sizes = ", ".join(f"{k} {v / GIB:.2f} GiB" for k, v in plan.resident.items())
        parts.append(f"the state held throughout the run alone needs "
                     f"{sum(plan.resident.values()) / GIB:.2f} GiB per device ({sizes})")
    for p in over:
        pieces = {
            "resident state (policy + optimizer + reference)": sum(plan.resident.values()),
            "activations and temporaries": p.temporaries,
        }
        biggest = max(pieces, key=pieces.get)
        parts.append(f"{p.name} needs {p.total / GIB:.2f} GiB (largest part: {biggest}, "
                     f"{pieces[biggest] / GIB:.2f} GiB)")
    return (
        f"the run does not fit {plan.accelerator.name} ({plan.capacity / GIB:.0f} GiB per device, "
        f"{int(HEADROOM * 100)}% usable): " + "; ".join(parts) + ". Shard state over more "
        "devices (mesh.fsdp), lower rl.micro_batch, rl.max_new_tokens or model.max_seq_len, "
        "or use bfloat16 (model.param_dtype)"
    )


def run(cfg: Config, accelerator: str | None = None) -> int:
    plan = make_plan(cfg, accelerator)
    print(report(plan, cfg))
    out = Path(cfg.run_dir) / "plan.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "accelerator": plan.accelerator and dataclasses.asdict(plan.accelerator),
        "mesh": plan.mesh_shape, "simulated": plan.simulated, "resident": plan.resident,
        "programs": [{**dataclasses.asdict(p), "total": p.total} for p in plan.programs],
        "capacity": plan.capacity, "fits": plan.fits,
    }, indent=2) + "\n")
    if not plan.fits:
        raise PlanError(misfit_message(plan))
    return 0
