"""Device mesh, logical-axis sharding and multi-process start-up.

Model code names array dimensions logically ("embed", "heads", ...); this module is the one
place that says which mesh axis each name lives on (`LOGICAL_RULES`). Changing the parallelism
of a run is therefore a mesh shape in the config, never an edit to model code.

Mesh axes:
  data    pure data parallelism (parameters replicated)
  fsdp    data parallelism with parameters and optimizer state sharded (ZeRO-3 style)
  tensor  tensor (model) parallelism over heads / MLP width / vocabulary

Multi-process runs (one process per host, or several on one machine for testing) read
`JAX_COORDINATOR_ADDRESS` (host:port), `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID`; see
`init_distributed` and `launch/local.sh`.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from exectune_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("norm", None),
    ("length", None),
    ("head_dim", None),
    ("layers", None),  # the stacked blocks' leading axis: every device holds every layer's slice
)
"""Logical dimension name -> mesh axis (or axes, or None = replicated)."""

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"

_RULES = dict(LOGICAL_RULES)


# ---------------------------------------------------------------------------------------------
# Mesh


def make_mesh(
    data: int | Any = 1,
    fsdp: int = -1,
    tensor: int = 1,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """Mesh with Auto axes ("data", "fsdp", "tensor"); one size may be -1 (fills the rest).

    `data` may also be a config object with `data`, `fsdp` and `tensor` attributes.
    Auto axes (not jax.make_mesh's Explicit default) let ordinary model code run unchanged:
    XLA propagates shardings from the parameters and the batch.
    When the sizes use fewer devices than available (e.g. a 1-device mesh in a test) the first
    devices are used; in a multi-process run the mesh must cover every device.
    """
    if not isinstance(data, int):
        data, fsdp, tensor = data.data, data.fsdp, data.tensor
    devices = list(jax.devices() if devices is None else devices)
    shape = _fill_mesh_shape((data, fsdp, tensor), len(devices))
    used = math.prod(shape)
    if used != len(devices) and jax.process_count() > 1:
        raise UserError(
            f"mesh data*fsdp*tensor = {used} but this multi-process run has {len(devices)} "
            "devices; the mesh must cover all of them (set one axis to -1)"
        )
    return jax.make_mesh(
        shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices[:used]
    )


def _fill_mesh_shape(sizes: Sequence[int], n_devices: int) -> tuple[int, ...]:
    """Resolve at most one -1 and check that the mesh fits the devices."""
    named = dict(zip(MESH_AXES, sizes, strict=True))
    if any(s == 0 or s < -1 for s in sizes):
        raise UserError(f"mesh sizes must be positive or -1, got {named}")
    if sum(s == -1 for s in sizes) > 1:
        raise UserError(f"at most one mesh axis may be -1, got {named}")
    fixed = math.prod(s for s in sizes if s != -1)
    if n_devices % fixed:
        raise UserError(
            f"mesh {named}: the product of the fixed sizes ({fixed}) does not divide the "
            f"{n_devices} available devices; pick sizes whose product divides {n_devices}"
        )
    return tuple(n_devices // fixed if s == -1 else s for s in sizes)


@contextlib.contextmanager
def use_mesh(mesh: Mesh) -> Iterator[Mesh]:
    """Context in which annotated nnx variables are created sharded on `mesh`.

    Sets the mesh and the logical-axis rules together: flax shards a variable that carries
    logical names as it is created (model construction, `nnx.Optimizer(...)`), and needs both.
    """
    with jax.set_mesh(mesh), nnx.logical_axis_rules(LOGICAL_RULES):
        yield mesh


# ---------------------------------------------------------------------------------------------
# Logical names -> shardings


def logical_to_spec(names: Sequence[str | None] | PartitionSpec) -> PartitionSpec:
    """Map logical dimension names to a mesh PartitionSpec using LOGICAL_RULES.

    A mesh axis is used by at most one dimension, the first that asks for it: activations
    ("batch", "length", "embed") shard the batch over fsdp and keep "embed" whole, while a
    weight ("embed", "mlp") shards "embed" over fsdp (the FSDP layout).
    """
    axes, used = [], set()
    for name in names:
        if name is not None and name not in _RULES and name not in MESH_AXES:
            raise ValueError(
                f"logical axis {name!r} has no entry in parallel.LOGICAL_RULES "
                f"(known: {sorted(_RULES)}); add a rule or use one of those names"
            )
        target = _RULES.get(name, name) if name is not None else None
        wanted = (target,) if isinstance(target, str) else tuple(target or ())
        free = tuple(a for a in wanted if a not in used)
        used.update(free)
        axes.append(free[0] if len(free) == 1 else (free or None))
    return PartitionSpec(*axes)


def logical_to_sharding(
    names: Sequence[str | None] | PartitionSpec, mesh: Mesh, shape: Sequence[int] | None = None
) -> NamedSharding:
    """NamedSharding on `mesh` for logical names; with `shape`, non-dividing dims stay whole."""
    spec = logical_to_spec(names)
    if shape is not None:
        spec = fit_spec(spec, shape, dict(mesh.shape))
    return NamedSharding(mesh, spec)


def fit_spec(
    spec: PartitionSpec, shape: Sequence[int], axis_sizes: dict[str, int]
) -> PartitionSpec:
    """Replicate every dimension whose size is not a multiple of its mesh axes' product.

    Real checkpoints have odd sizes (a 2-head KV projection on a 4-way tensor axis, a vocabulary
    of 50257); replicating that one dimension is correct and costs only memory.
    """
    fitted = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        ways = math.prod(axis_sizes[a] for a in names)
        fitted.append(axes if dim % ways == 0 else None)
    return PartitionSpec(*fitted)


def with_logical_constraint(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Constrain an activation's sharding by logical names; a no-op when no mesh is set."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    spec = fit_spec(logical_to_spec(names), x.shape, dict(mesh.shape))
    return jax.lax.with_sharding_constraint(x, spec)


def state_shardings(state: Any, mesh: Mesh) -> Any:
    """NamedShardings for an nnx state (concrete or abstract), from its logical annotations.

    Variables without annotations (RNG counters, scalars) are replicated.
    """

    def one(var: nnx.Variable) -> nnx.Variable:
        value = var.get_value()
        names = var.get_metadata().get("out_sharding") or ()
        spec = fit_spec(logical_to_spec(names), value.shape, dict(mesh.shape))
        return var.replace(NamedSharding(mesh, spec))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_model(model: nnx.Module, mesh: Mesh) -> nnx.Module:
    """Move an existing model's (or optimizer's) state onto `mesh`, in place; returns it.

    For a model built on one host (loaded from a checkpoint, built without a mesh). Use
    `create_sharded` when the model is too large to materialise on one device.
    """
    state = nnx.state(model)
    nnx.update(model, jax.device_put(state, state_shardings(state, mesh)))
    return model


def create_sharded(factory: Callable[[], Any], mesh: Mesh) -> Any:
    """Build `factory()` (a module, or a tuple of them) with every array born sharded.

    The state is computed inside one jit whose out_shardings come from the annotations, so no
    single device ever holds the full parameters.
    """
    with use_mesh(mesh):
        graphdef, abstract = nnx.split(nnx.eval_shape(factory))
        shardings = state_shardings(abstract, mesh)
        state = jax.jit(lambda: nnx.split(factory())[1], out_shardings=shardings)()
    return nnx.merge(graphdef, state)


# ---------------------------------------------------------------------------------------------
# Batches


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over data and fsdp; other dimensions whole."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def local_batch_slice(mesh: Mesh, global_batch_size: int) -> slice:
    """Rows of the global batch that this process must load (for `global_batch`)."""
    shards = batch_sharding(mesh).addressable_devices_indices_map((global_batch_size,))
    rows = sorted({(i[0].start or 0, i[0].stop or global_batch_size) for i in shards.values()})
    start, stop = rows[0][0], rows[-1][1]
    if sum(b - a for a, b in rows) != stop - start:
        raise ValueError(
            f"this process's batch rows {rows} are not contiguous; order the mesh devices by "
            "process (the default of make_mesh on CPU/GPU)"
        )
    return slice(start, stop)


def global_batch(local: Any, mesh: Mesh) -> Any:
    """Assemble a global batch (pytree of arrays) from each process's rows.

    Each process passes its own, different rows (same count everywhere); in a single process
    that is the whole batch and this is a sharded device_put. To rebuild one exact global batch
    (tests), pass the rows `local_batch_slice` names; for training any split of i.i.d. rows is
    as good.
    """
    sharding, ways = batch_sharding(mesh), _local_batch_shards(mesh)

    def one(x: Any) -> jax.Array:
        x = np.asarray(x)
        if x.shape[0] % ways:
            raise UserError(
                f"a batch of {x.shape[0]} rows per process does not split over this process's "
                f"{ways} data*fsdp shards; make the batch size a multiple of "
                f"{ways * jax.process_count()} (data*fsdp of mesh {dict(mesh.shape)})"
            )
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(one, local)


def _local_batch_shards(mesh: Mesh) -> int:
    """How many distinct batch shards this process's devices hold."""
    devices, here = mesh.devices, jax.process_index()
    return len({at[:2] for at in np.ndindex(devices.shape) if devices[at].process_index == here})


# ---------------------------------------------------------------------------------------------
# Multi-process start-up


def init_distributed(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Join a multi-process JAX run; returns True when running with several processes.

    Order of precedence: explicit arguments, then the env vars JAX_COORDINATOR_ADDRESS
    (host:port), JAX_NUM_PROCESSES, JAX_PROCESS_ID (set by launch/local.sh), then a Cloud TPU
    environment (jax discovers the pod's hosts itself). With none of these it does nothing: a
    plain single process. Must run before anything touches a JAX device. CPU processes talk
    through gloo collectives, so the same code runs on a laptop, a GPU box or a TPU pod.
    """
    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    coordinator = coordinator or os.environ.get(ENV_COORDINATOR)
    num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
    if coordinator is not None:
        if num_processes is None or process_id is None:
            raise UserError(
                f"coordinator {coordinator!r} given but the process count or id is missing: set "
                f"{ENV_NUM_PROCESSES} and {ENV_PROCESS_ID} (or pass num_processes/process_id)"
            )
        if num_processes == 1:
            return False
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator, num_processes, process_id)
        return True
    if _on_cloud_tpu_vm():
        jax.distributed.initialize()
        return jax.process_count() > 1
    return False


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"environment variable {name}={raw!r} must be an integer") from None


def _on_cloud_tpu_vm() -> bool:
    """libtpu installed and TPU chips present: jax can discover the pod's other hosts."""
    has_chips = bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))
    return has_chips and importlib.util.find_spec("libtpu") is not None
