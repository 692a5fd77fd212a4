"""Checkpoints: exact resume in a fresh process, resume on another mesh, data position, keep-N,
half-written and damaged checkpoints."""

import json
import os
import subprocess
import sys
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import tiny_training as tt
from exectune_jax import parallel
from exectune_jax.models.transformer import Transformer
from exectune_jax.train.checkpoint import Checkpointer, CheckpointError

SCRIPT = Path(tt.__file__)
STEPS, SAVE_AT = 6, 3


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Six steps on a (2,2,2) mesh, checkpointing after step 3 along the way."""
    ckpt_dir = tmp_path_factory.mktemp("run") / "ckpt"
    mesh = parallel.make_mesh(2, 2, 2)
    model, opt = tt.build(mesh)
    it = iter(tt.dataset())
    with Checkpointer(ckpt_dir) as ckpt:
        losses = tt.train(model, opt, it, mesh, SAVE_AT)
        ckpt.save(SAVE_AT, state=tt.checkpoint_state(model, opt), data_iter=it,
                  meta={"step": SAVE_AT})
        losses += tt.train(model, opt, it, mesh, STEPS - SAVE_AT)
    return {"dir": ckpt_dir, "losses": losses, "next_batch": np.asarray(next(it))}


@pytest.mark.slow
def test_resume_in_a_fresh_process_gives_identical_losses_and_batches(uninterrupted, tmp_path):
    subprocess.run(
        [sys.executable, str(SCRIPT), "--mesh", "2,2,2", "--steps", str(STEPS), "--resume",
         "--ckpt", str(uninterrupted["dir"]), "--out", str(tmp_path)],
        check=True, env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"},
    )
    resumed = json.loads((tmp_path / "process0.json").read_text())
    assert resumed["losses"] == uninterrupted["losses"][SAVE_AT:]
    np.testing.assert_array_equal(resumed["next_batch"], uninterrupted["next_batch"])


def test_resume_onto_a_different_mesh_continues_the_same_run(uninterrupted):
    mesh = parallel.make_mesh(1, 4, 2)
    model, opt = tt.build(mesh)
    it = iter(tt.dataset())
    state, meta = Checkpointer(uninterrupted["dir"]).restore(
        target=tt.checkpoint_state(model, opt), data_iter=it)
    tt.load_into(model, opt, state)
    kernel = model.layers.mlp.up_proj.kernel[...]
    assert kernel.sharding.mesh == mesh and kernel.sharding.spec == P(None, "fsdp", "tensor")
    assert meta == {"step": SAVE_AT}
    losses = tt.train(model, opt, it, mesh, STEPS - SAVE_AT)
    np.testing.assert_allclose(losses, uninterrupted["losses"][SAVE_AT:], rtol=0, atol=1e-5)


def test_abstract_target_from_eval_shape_restores_onto_a_concrete_mesh(uninterrupted):
    mesh = parallel.make_mesh(1, 8, 1)
    with parallel.use_mesh(mesh):
        abstract = nnx.state(nnx.eval_shape(lambda: Transformer(tt.CFG, rngs=nnx.Rngs(0))),
                             nnx.Param)
    abstract = jax.tree.map(  # what nnx.get_abstract_model gives: shardings on an abstract mesh
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s.update(
            mesh=mesh.abstract_mesh)),
        abstract, parallel.state_shardings(abstract, mesh))
    ckpt = Checkpointer(uninterrupted["dir"])
    with pytest.raises(CheckpointError, match="pass mesh="):
        ckpt.restore(target={"params": abstract})
    state, _ = ckpt.restore(target={"params": abstract}, mesh=mesh)
    embed = state["params"]["embed"][...]
    assert isinstance(embed, jax.Array) and embed.sharding.spec == P("tensor", "fsdp")


def _iterator_dataset():
    return grain.MapDataset.range(40).shuffle(seed=7).batch(4).to_iter_dataset()


def test_data_iterator_resumes_at_the_saved_position_even_if_it_moved_on(tmp_path):
    it = iter(_iterator_dataset())
    next(it), next(it)
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(2, state={"step": {"n": jnp.array(2)}}, data_iter=it)
        expected = next(it)  # advanced while the asynchronous save may still be writing
    fresh = iter(_iterator_dataset())
    Checkpointer(tmp_path).restore(target={}, data_iter=fresh)
    np.testing.assert_array_equal(next(fresh), expected)


def test_only_the_newest_keep_checkpoints_remain(tmp_path):
    with Checkpointer(tmp_path, keep=2) as ckpt:
        for step in range(1, 6):
            ckpt.save(step, state={"w": {"x": jnp.full((2,), step)}})
    ckpt = Checkpointer(tmp_path, keep=2)
    assert ckpt.all_steps() == [4, 5] and ckpt.latest_step() == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["4", "5"]
    state, _ = ckpt.restore(target={"w": {"x": jnp.zeros((2,), jnp.int32)}})
    np.testing.assert_array_equal(state["w"]["x"], [5, 5])


def test_saving_a_step_twice_keeps_the_first_and_says_so(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.save(1, state={"w": {"x": jnp.ones(2)}}) is True
        assert ckpt.save(1, state={"w": {"x": jnp.zeros(2)}}) is False
    state, _ = Checkpointer(tmp_path).restore(target={"w": {"x": jnp.zeros(2)}})
    np.testing.assert_array_equal(state["w"]["x"], [1, 1])


def test_a_half_written_step_is_never_picked_up(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state={"w": {"x": jnp.ones(2)}})
    (tmp_path / "2.orbax-checkpoint-tmp-1764358800").mkdir()  # a save killed before finalizing
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() == 1
        assert ckpt.save(2, state={"w": {"x": jnp.full(2, 2.0)}})  # the resumed run saves again
    state, _ = Checkpointer(tmp_path).restore(target={"w": {"x": jnp.zeros(2)}})
    np.testing.assert_array_equal(state["w"]["x"], [2, 2])


def test_a_fresh_directory_has_no_step_and_restore_says_so(tmp_path):
    ckpt = Checkpointer(tmp_path / "none")
    assert ckpt.latest_step() is None
    with pytest.raises(CheckpointError, match="no checkpoint to restore"):
        ckpt.restore(target={"w": {"x": jnp.ones(2)}})


def test_a_damaged_latest_checkpoint_names_its_directory_and_the_way_out(tmp_path):
    target = {"w": {"x": jnp.ones((64,))}}
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state=target)
        ckpt.save(2, state=target)
    for f in (tmp_path / "2" / "w").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and f.name != "_METADATA":
            f.write_bytes(b"\0")
    with pytest.raises(CheckpointError) as info:
        Checkpointer(tmp_path).restore(target=target)
    message = str(info.value)
    assert str(tmp_path / "2") in message and "delete it to resume from step 1" in message
    state, _ = Checkpointer(tmp_path).restore(1, target=target)
    np.testing.assert_array_equal(state["w"]["x"], np.ones(64))


def test_asking_for_a_data_iterator_a_checkpoint_lacks_says_what_to_do(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state={"w": {"x": jnp.ones(2)}})
    with pytest.raises(CheckpointError, match="pass data_iter=None"):
        Checkpointer(tmp_path).restore(target={}, data_iter=iter(_iterator_dataset()))


def test_data_state_saved_by_another_process_count_is_refused_with_the_way_out(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state={"w": {"x": jnp.ones(2)}}, data_iter=iter(_iterator_dataset()))
    data = tmp_path / "1" / "data"
    for i in range(2):  # what a two-process run leaves
        (data / f"process_{i}-of-2.json").write_text((data / "process_0-of-1.json").read_text())
    (data / "process_0-of-1.json").unlink()
    with pytest.raises(CheckpointError, match="pass data_iter=None") as info:
        Checkpointer(tmp_path).restore(target={}, data_iter=iter(_iterator_dataset()))
    assert "process_0-of-2.json, process_1-of-2.json" in str(info.value)
    state, _ = Checkpointer(tmp_path).restore(target={"w": {"x": jnp.zeros(2)}})
    np.testing.assert_array_equal(state["w"]["x"], [1, 1])


def test_reserved_item_names_are_refused(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        Checkpointer(tmp_path).save(1, state={"meta": {"x": jnp.ones(2)}})
