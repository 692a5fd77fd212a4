"""Checkpoints: exact resume in a fresh process, resume on another mesh, data position, keep-N,
half-written and damaged checkpoints."""

import gc
import json
import os
import subprocess
import sys
import time
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


def _truncate(step_dir: Path, item: str, name: str) -> None:
    """Cut every file called `name` under one item of a step to half its length."""
    files = [f for f in (step_dir / item).rglob(name) if f.is_file() and f.stat().st_size > 1]
    assert files, f"no {name} under {step_dir / item}"
    for f in files:
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


NOISE = ("Exception ignored", "Event loop is closed", "Traceback", "TensorStore(")


@pytest.fixture
def noise(monkeypatch, capfd):
    """What a failed restore printed or left for `sys.unraisablehook` (where "Exception ignored
    in: <coroutine ...>" and tensorstore's "Event loop is closed" go; pytest would otherwise
    turn them into warnings), once its stranded work has had time to finish."""
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)

    def collect() -> list[str]:
        gc.collect()
        time.sleep(0.5)
        err = capfd.readouterr().err
        return [n for n in NOISE if n in err] + [f"{u.exc_type.__name__}: {u.exc_value}"
                                                 for u in unraisable]

    return collect


@pytest.fixture
def two_steps(tmp_path):
    """A tiny model's parameters checkpointed at step 1, and plus one at step 2."""
    params = nnx.state(Transformer(tt.CFG, rngs=nnx.Rngs(0)), nnx.Param)
    saved = {}
    with Checkpointer(tmp_path) as ckpt:
        for step in (1, 2):
            ckpt.save(step, state={"params": params}, meta={"step": step})
            saved[step] = np.asarray(params["embed"][...])
            params = jax.tree.map(lambda x: x + 1, params)
    return {"dir": tmp_path, "target": {"params": params}, "embed": saved}


def test_a_damaged_newest_step_is_passed_over_for_the_previous_with_one_line(
        two_steps, caplog, noise):
    ckpt_dir, target = two_steps["dir"], two_steps["target"]
    _truncate(ckpt_dir / "2", "params", "manifest.ocdbt")
    ckpt = Checkpointer(ckpt_dir)
    with caplog.at_level("WARNING", logger="exectune_jax.train.checkpoint"):
        state, meta = ckpt.restore(target=target)
    np.testing.assert_array_equal(state["params"]["embed"][...], two_steps["embed"][1])
    assert meta == {"step": 1} and ckpt.restored_step == 1
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"checkpoint step 2 in {ckpt_dir} is unreadable (")
    assert line.endswith("); resuming from step 1") and "manifest" in line
    assert "\n" not in line and "tensorstore_spec" not in line
    assert noise() == []
    # the resumed run saves step 2 again, over the damaged one
    assert ckpt.save(2, state=state, meta={"step": 2})
    ckpt.close()
    state, meta = Checkpointer(ckpt_dir).restore(target=target)
    np.testing.assert_array_equal(state["params"]["embed"][...], two_steps["embed"][1])
    assert meta == {"step": 2}


def test_when_no_step_can_be_read_restore_raises_one_line(two_steps, noise):
    ckpt_dir, target = two_steps["dir"], two_steps["target"]
    for step in ("1", "2"):
        _truncate(ckpt_dir / step, "params", "manifest.ocdbt")
    with pytest.raises(CheckpointError) as info:
        Checkpointer(ckpt_dir).restore(target=target)
    message = str(info.value)
    assert message.startswith(f"no checkpoint in {ckpt_dir} can be restored (step 2: ")
    assert "steps 1 failed too" in message and "delete them to start over" in message
    assert "\n" not in message and "tensorstore_spec" not in message
    # a step asked for by number is read or refused, never replaced by another
    with pytest.raises(CheckpointError, match="delete it to resume from step 1"):
        Checkpointer(ckpt_dir).restore(2, target=target)
    assert noise() == []


def test_a_failed_read_leaves_no_event_loop_noise_on_stderr(tmp_path, noise):
    """orbax reads each array in its own task: a read that fails first must not strand the rest
    on a closed event loop (tensorstore then prints "Event loop is closed" from its threads)."""
    target = {"w": {f"x{i}": jnp.full((16,), i, jnp.float32) for i in range(300)}}
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state=target)
    _truncate(tmp_path / "1", "w", "manifest.ocdbt")
    ckpt = Checkpointer(tmp_path)
    for _ in range(20):  # how many reads are still in flight when the first fails varies
        with pytest.raises(CheckpointError, match="cannot be restored"):
            ckpt.restore(1, target=target)
    ckpt.close()
    assert noise() == []


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
