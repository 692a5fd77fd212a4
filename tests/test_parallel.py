"""Mesh construction, logical-axis shardings, and sharded training matching one device."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, PartitionSpec as P

import tiny_training as tt
from exectune_jax import parallel
from exectune_jax.config import MeshConfig
from exectune_jax.errors import UserError
from exectune_jax.models.transformer import Transformer


def test_make_mesh_fills_the_minus_one_axis_with_auto_axis_types():
    mesh = parallel.make_mesh(data=2, fsdp=-1, tensor=2)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert mesh.axis_types == (AxisType.Auto,) * 3


def test_make_mesh_reads_a_mesh_config_and_may_use_fewer_devices():
    assert dict(parallel.make_mesh(MeshConfig(data=1, fsdp=-1, tensor=4)).shape)["fsdp"] == 2
    assert parallel.make_mesh(1, 1, 1).devices.size == 1


@pytest.mark.parametrize(
    "sizes, message",
    [((3, -1, 1), "does not divide the 8"), ((1, 1, 16), "does not divide the 8"),
     ((-1, -1, 1), "at most one"), ((0, 1, 1), "positive")],
)
def test_make_mesh_rejects_impossible_shapes_with_a_clear_error(sizes, message):
    with pytest.raises(UserError, match=message):
        parallel.make_mesh(*sizes)


def test_logical_names_map_to_mesh_axes_each_used_once():
    assert parallel.logical_to_spec(("embed", "mlp")) == P("fsdp", "tensor")
    assert parallel.logical_to_spec(("vocab", "embed")) == P("tensor", "fsdp")
    assert parallel.logical_to_spec(("norm",)) == P(None)
    # activations: the batch takes data+fsdp, so "embed" (also fsdp) stays whole
    assert parallel.logical_to_spec(("batch", "length", "embed")) == P(("data", "fsdp"), None, None)
    with pytest.raises(ValueError, match="'experts' has no entry"):
        parallel.logical_to_spec(("experts", "embed"))


def test_dimensions_that_do_not_divide_their_mesh_axes_are_replicated():
    mesh = parallel.make_mesh(2, 2, 2)
    sharding = parallel.logical_to_sharding(("kv_heads", "embed"), mesh, shape=(3, 64))
    assert sharding.spec == P(None, "fsdp")


def test_shard_model_places_every_parameter_by_its_annotation():
    with nnx.use_eager_sharding(False):
        model = Transformer(tt.CFG, rngs=nnx.Rngs(0))
    before = nnx.to_pure_dict(nnx.state(model))
    mesh = parallel.make_mesh(2, 2, 2)
    parallel.shard_model(model, mesh)
    layers = model.layers  # stacked: the leading layer axis is never split
    assert model.embed[...].sharding.spec == P("tensor", "fsdp")
    assert layers.attn.k_proj.kernel[...].sharding.spec == P(None, "fsdp", "tensor")
    assert layers.attn.o_proj.kernel[...].sharding.spec == P(None, "tensor", "fsdp")
    assert layers.mlp.down_proj.kernel[...].sharding.spec == P(None, "tensor", "fsdp")
    assert layers.attn_norm.scale[...].sharding.spec == P(None, None)
    jax.tree.map(np.testing.assert_array_equal, before, nnx.to_pure_dict(nnx.state(model)))


def test_create_sharded_builds_the_same_values_already_sharded():
    mesh = parallel.make_mesh(1, 4, 2)
    model = parallel.create_sharded(lambda: Transformer(tt.CFG, rngs=nnx.Rngs(0)), mesh)
    reference = Transformer(tt.CFG, rngs=nnx.Rngs(0))
    q = model.layers.attn.q_proj.kernel[...]
    assert q.sharding.mesh == mesh and q.sharding.spec == P(None, "fsdp", "tensor")
    assert q.addressable_shards[0].data.shape == (tt.CFG.num_layers, 16, 32)
    # the same random draws; compiled vs eager initialisers may differ in the last bit
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8),
                 nnx.to_pure_dict(nnx.state(reference)), nnx.to_pure_dict(nnx.state(model)))


def test_global_batch_splits_rows_over_data_and_fsdp():
    mesh = parallel.make_mesh(2, 2, 2)
    rows = np.arange(8 * 3).reshape(8, 3)
    assert parallel.local_batch_slice(mesh, 8) == slice(0, 8)
    batch = parallel.global_batch({"tokens": rows}, mesh)["tokens"]
    assert batch.sharding.spec == P(("data", "fsdp"))
    assert {s.data.shape for s in batch.addressable_shards} == {(2, 3)}
    np.testing.assert_array_equal(np.asarray(batch), rows)


def test_a_batch_that_does_not_split_over_data_and_fsdp_says_which_multiple_to_use():
    with pytest.raises(UserError, match="multiple of 4"):
        parallel.global_batch({"tokens": np.zeros((6, 3))}, parallel.make_mesh(2, 2, 2))


def test_with_logical_constraint_is_a_no_op_without_a_mesh():
    x = np.ones((2, 3, 4), np.float32)
    assert parallel.with_logical_constraint(x, ("batch", "length", "embed")) is x


def test_sharded_adamw_training_matches_one_device():
    losses = {}
    for shape in [(1, 1, 1), (2, 2, 2)]:
        mesh = parallel.make_mesh(*shape)
        model, opt = tt.build(mesh)
        losses[shape] = tt.train(model, opt, iter(tt.dataset()), mesh, steps=4)
    one, eight = np.array(losses[(1, 1, 1)]), np.array(losses[(2, 2, 2)])
    assert one[-1] != one[0]  # the steps really update the parameters
    np.testing.assert_allclose(eight, one, rtol=0, atol=1e-5)


def test_init_distributed_is_a_no_op_for_a_single_process(monkeypatch):
    for name in (parallel.ENV_COORDINATOR, parallel.ENV_NUM_PROCESSES, parallel.ENV_PROCESS_ID):
        monkeypatch.delenv(name, raising=False)
    assert parallel.init_distributed() is False
    assert not jax.distributed.is_initialized()


def test_init_distributed_names_the_missing_variable(monkeypatch):
    monkeypatch.setenv(parallel.ENV_COORDINATOR, "localhost:1")
    monkeypatch.delenv(parallel.ENV_NUM_PROCESSES, raising=False)
    with pytest.raises(UserError, match="JAX_NUM_PROCESSES"):
        parallel.init_distributed()
    monkeypatch.setenv(parallel.ENV_NUM_PROCESSES, "two")
    monkeypatch.setenv(parallel.ENV_PROCESS_ID, "0")
    with pytest.raises(UserError, match="JAX_NUM_PROCESSES='two' must be an integer"):
        parallel.init_distributed()
