"""One orbax checkpoint per step: training state, data-iterator position and a JSON meta dict.

Layout of `<directory>/<step>/`: one item per key of `state` (e.g. "params", "opt_state", "rng",
each a pytree of arrays), "meta" (JSON: config, ledger totals, anything small) and, when given,
"data" (the grain iterator state, one file per process). Orbax writes each step into a temporary
directory and renames it when complete, so a crash mid-save leaves nothing `latest_step()` would
pick up. A step damaged afterwards (a truncated file, a disk error) is passed over by a resume:
`restore()` reads the newest step it can, logging one line per step it skipped, and raises one
`CheckpointError` only when no step can be read.

Restoring onto a different mesh is the normal case (resume on another topology): the `target`
says what shape, dtype and sharding each array should have, and orbax reads every shard
straight onto its device.

    ckpt = Checkpointer(run_dir / "checkpoints", keep=3)
    ckpt.save(step, state={"params": params, "opt_state": opt_state, "rng": key},
              data_iter=it, meta={"config": cfg_dict})
    state, meta = ckpt.restore(target={"params": params, "opt_state": opt_state, "rng": key},
                               data_iter=it)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx
from grain.checkpoint import CheckpointRestore, CheckpointSave
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from exectune_jax.errors import UserError

META, DATA = "meta", "data"
RESERVED = (META, DATA)
REASON_CHARS = 240  # of an unreadable step's reason, as logged or raised

log = logging.getLogger(__name__)


class CheckpointError(UserError):
    """A checkpoint that cannot be used, with the step directory and what to do."""


class _Unreadable(Exception):
    """One step could not be read; `reason` is one short line."""

    def __init__(self, step: int, reason: str):
        super().__init__(reason)
        self.step, self.reason = step, reason


class Checkpointer:
    """Save, list and restore step checkpoints in one directory; keeps the newest `keep`.

    Saves are asynchronous when `async_save` (device arrays are copied to host before `save`
    returns, so training may continue and even donate its buffers); `wait()` blocks until the
    last save is on disk, and `restore`/`close` wait by themselves. In a multi-process run every
    process calls every method (orbax coordinates; each process writes its own shards and its
    own data-iterator state), and `directory` must be storage every host sees: a bucket
    (gs://...) or a shared filesystem.
    """

    def __init__(self, directory: str | Path, keep: int = 3, *, async_save: bool = True):
        if keep < 1:
            raise CheckpointError(f"checkpoint keep={keep}: keep at least 1 checkpoint")
        directory = str(directory)
        self.directory = epath.Path(directory if "://" in directory else os.path.abspath(directory))
        self.restored_step: int | None = None  # the step the last `restore` read
        self._unreadable_steps: set[int] = set()  # found damaged: a save of the step replaces it
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=async_save
            ),
        )

    def save(
        self,
        step: int,
        *,
        state: Mapping[str, Any],
        data_iter: Any = None,
        meta: Mapping[str, Any] | None = None,
    ) -> bool:
        """Write `state` (name -> pytree; nnx.State allowed), the iterator position and `meta`.

        Returns False, writing nothing, when `step` is already saved: a deterministic run has
        the same state there (e.g. a final save right after a periodic one). A step `restore`
        found unreadable is not kept that way: the save replaces it.
        """
        _check_names(state)
        if step in self._unreadable_steps:
            self._manager.delete(step)
            self._unreadable_steps.discard(step)
        elif step in self._manager.all_steps():
            return False
        items = {name: ocp.args.StandardSave(_saveable(tree)) for name, tree in state.items()}
        items[META] = ocp.args.JsonSave(dict(meta or {}))
        if data_iter is not None:
            items[DATA] = CheckpointSave(_IteratorSnapshot(data_iter))
        self._manager.save(step, args=ocp.args.Composite(**items))
        return True

    def latest_step(self) -> int | None:
        """Newest complete step, or None when there is none (fresh run)."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def step_dir(self, step: int) -> epath.Path:
        return self.directory / str(step)

    def restore(
        self,
        step: int | None = None,
        *,
        target: Mapping[str, Any],
        data_iter: Any = None,
        mesh: Mesh | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Read `step` (default: the newest readable one) into arrays laid out like `target`.

        `target` maps item names to pytrees of arrays or `jax.ShapeDtypeStruct`s (a subset of
        the saved items is fine, e.g. params only). Each leaf's sharding decides where its
        shards land; with `mesh`, NamedSharding specs are re-homed onto that concrete mesh
        (needed for targets built by `nnx.eval_shape`, which carry an abstract mesh) and leaves
        without a sharding are replicated on it. `data_iter` is set to the saved position in
        place. Returns (state, meta) with state keyed like `target`; `restored_step` is the step
        read.

        Without `step`, a step that cannot be read (damaged, or missing an item of `target`) is
        passed over for the next older one, with one warning per step passed over, and a
        CheckpointError comes only when none can be read. A given `step` is read or refused.
        """
        self.wait()
        _check_names(target)
        if step is not None:
            if step not in self.all_steps():
                raise CheckpointError(
                    f"no checkpoint for step {step} in {self.directory} "
                    f"(available: {self.all_steps() or 'none'})"
                )
            try:
                return self._restore(step, target, data_iter, mesh)
            except _Unreadable as e:
                raise self._unreadable(e) from None
        steps = self.all_steps()[::-1]
        if not steps:
            raise CheckpointError(f"no checkpoint to restore in {self.directory}")
        passed: list[_Unreadable] = []
        for candidate in steps:
            try:
                restored = self._restore(candidate, target, data_iter, mesh)
            except _Unreadable as e:
                passed.append(e)
                continue
            for e in passed:
                log.warning("checkpoint step %d in %s is unreadable (%s); resuming from step %d",
                            e.step, self.directory, e.reason, candidate)
            self._unreadable_steps.update(e.step for e in passed)
            return restored
        newest, older = passed[0], ", ".join(str(e.step) for e in passed[1:])
        older = f"; steps {older} failed too" if older else ""
        raise CheckpointError(
            f"no checkpoint in {self.directory} can be restored (step {newest.step}: "
            f"{newest.reason}{older}); if they were written by a different model or process "
            "count, resume with that one; if they are damaged, delete them to start over"
        )

    def _restore(
        self, step: int, target: Mapping[str, Any], data_iter: Any, mesh: Mesh | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Read one step; `_Unreadable` when it is damaged or lacks an item asked for."""
        self._check_items(step, [*target, META] + ([DATA] if data_iter is not None else []))
        items = {
            name: ocp.args.StandardRestore(_abstract(_saveable(tree), mesh))
            for name, tree in target.items()
        }
        items[META] = ocp.args.JsonRestore()
        if data_iter is not None:
            items[DATA] = CheckpointRestore(data_iter)
        try:
            with _settled_event_loops():
                restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # orbax/tensorstore raise many types; all mean the same to a user
            raise _Unreadable(step, _reason(e)) from e
        state = {name: _like(target[name], restored[name]) for name in target}
        self.restored_step = step
        return state, dict(restored[META] or {})

    def wait(self) -> None:
        """Block until the last asynchronous save is complete on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_items(self, step: int, names: list[str]) -> None:
        saved = {p.name for p in self.step_dir(step).iterdir() if p.is_dir()}
        missing = [n for n in names if n not in saved]
        if missing:
            hint = (
                "; it was saved without a data iterator: pass data_iter=None"
                if missing == [DATA]
                else ""
            )
            raise _Unreadable(step, f"item(s) {missing} not in the checkpoint{hint}")
        if DATA in names:
            self._check_data_processes(step)

    def _check_data_processes(self, step: int) -> None:
        """grain keeps one file per process: resuming with another process count cannot work."""
        mine = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        saved = sorted(p.name for p in (self.step_dir(step) / DATA).iterdir())
        if mine not in saved:
            raise CheckpointError(
                f"checkpoint {self.step_dir(step)} holds the data-iterator state of another "
                f"process count ({', '.join(saved) or 'none'}; this run needs {mine}); resume "
                "with the same number of processes, or pass data_iter=None to restore the rest "
                "and restart the data order"
            )

    def _unreadable(self, e: _Unreadable) -> CheckpointError:
        earlier = [s for s in self.all_steps() if s < e.step]
        fallback = (
            f"delete it to resume from step {earlier[-1]}" if earlier else "delete it to start over"
        )
        return CheckpointError(
            f"checkpoint {self.step_dir(e.step)} cannot be restored ({e.reason}); if it is "
            f"damaged or was written by a different model or process count, {fallback}"
        )


def _reason(error: BaseException) -> str:
    """The root cause's first line, without the spec dumps orbax and tensorstore append."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = str(error).strip()
    first = text.splitlines()[0] if text else ""
    for dump in (" [tensorstore_spec", " See full TensorStore details"):
        first = first.split(dump)[0]
    if len(first) > REASON_CHARS:  # tensorstore puts context first: its last clauses say what broke
        clauses = first.split(": ")
        kept = clauses.pop()[-REASON_CHARS:]
        while clauses and len(clauses[-1]) + len(kept) + 2 <= REASON_CHARS:
            kept = f"{clauses.pop()}: {kept}"
        first = f"...: {kept}"
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


class _SettlingLoop(asyncio.SelectorEventLoop):
    """An event loop that runs the tasks still pending on it to completion before it closes.

    orbax runs a restore in a fresh loop, one task per array under `asyncio.gather`; when one read
    fails, gather returns at once and orbax closes the loop with the other reads in flight.
    tensorstore then completes those into the closed loop ("RuntimeError: Event loop is closed",
    printed from its threads) and their coroutines are collected unfinished ("Exception ignored
    in: <coroutine ...>"): screens of stderr after a one-line error. Cancelling them instead is
    not enough: a cancelled read still calls back into the loop when tensorstore finishes it.
    """

    def close(self) -> None:
        if not self.is_closed() and not self.is_running():
            pending = [t for t in asyncio.all_tasks(self) if not t.done()]
            if pending:
                self.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        super().close()


class _SettlingPolicy(asyncio.DefaultEventLoopPolicy):
    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return _SettlingLoop()


@contextlib.contextmanager
def _settled_event_loops() -> Iterator[None]:
    """Within: every new event loop (orbax makes its own) is a `_SettlingLoop`."""
    previous = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(_SettlingPolicy())
    try:
        yield
    finally:
        asyncio.set_event_loop_policy(previous)


class _IteratorSnapshot:
    """An iterator's position frozen at save time: an async save may write it later.

    grain's handler writes `get_state()` bytes verbatim; it is the same JSON text the live
    iterator would produce, so `CheckpointRestore` on a real iterator reads it back.
    """

    def __init__(self, iterator: Any):
        state = iterator.get_state()
        self._state = state if isinstance(state, bytes) else json.dumps(state, indent=4).encode()

    def get_state(self) -> bytes:
        return self._state


def _check_names(state: Mapping[str, Any]) -> None:
    clash = [n for n in state if n in RESERVED]
    if clash:
        raise ValueError(f"checkpoint item names {clash} are reserved ({RESERVED}); rename them")


def _saveable(tree: Any) -> Any:
    """nnx.State -> nested dict of arrays (what orbax stores); anything else unchanged."""
    return nnx.to_pure_dict(tree) if isinstance(tree, nnx.State) else tree


def _like(target: Any, restored: Any) -> Any:
    """Give the restored pure dict the target's type back (nnx.State in, nnx.State out)."""
    if not isinstance(target, nnx.State):
        return restored
    out = jax.tree.map(lambda x: x, target)
    nnx.replace_by_pure_dict(out, restored)
    return out


def _abstract(tree: Any, mesh: Mesh | None) -> Any:
    """ShapeDtypeStructs carrying the sharding each restored array should get."""

    def leaf(x: Any) -> Any:
        if not hasattr(x, "shape") or isinstance(x, np.ndarray):
            return x
        sharding = getattr(x, "sharding", None)
        if mesh is not None:
            spec = sharding.spec if isinstance(sharding, NamedSharding) else PartitionSpec()
            sharding = NamedSharding(mesh, spec)
        elif isinstance(sharding, NamedSharding) and not isinstance(sharding.mesh, Mesh):
            raise CheckpointError(
                "restore target has arrays sharded on an abstract mesh (from nnx.eval_shape); "
                "pass mesh=<the concrete mesh> to Checkpointer.restore"
            )
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    return jax.tree.map(leaf, tree)
