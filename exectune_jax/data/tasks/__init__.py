"""Task registry: `get(name, **options) -> Task`, `for_run`, `register(name)`, `names()`.

Adding a task: put a module in this package that defines a factory and decorates it,

    @register("mytask")
    def make(**options) -> Task: ...

Modules of this package are imported on the first lookup, so a new file registers itself with
no other edit. `options` are the keyword options from the config (`task.options`).

Every task `get` returns hands out its splits through `base.note_read`, so a pipeline stage
(declared with `reading_as`) other than eval cannot read a test split, and `reads()` tells
which splits a process read.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from exectune_jax import layout
from exectune_jax.data.tasks.base import DataError, Problem, Task, Verdict, note_read, reading_as, reads

_FACTORIES: dict[str, Callable[..., Task]] = {}
_SUPPORT_MODULES = {"base", "answers"}
_discovered = False


def register(name: str) -> Callable[[Callable[..., Task]], Callable[..., Task]]:
    """Decorator: make `factory(**options)` available as task `name`."""

    def decorate(factory: Callable[..., Task]) -> Callable[..., Task]:
        if name in _FACTORIES and _FACTORIES[name] is not factory:
            raise ValueError(f"task {name!r} is registered twice")
        _FACTORIES[name] = factory
        return factory

    return decorate


def _discover() -> None:
    global _discovered
    if not _discovered:
        for module in pkgutil.iter_modules(__path__):
            if module.name not in _SUPPORT_MODULES:
                importlib.import_module(f"{__name__}.{module.name}")
        _discovered = True


def names() -> list[str]:
    _discover()
    return sorted(_FACTORIES)


def get(name: str, **options: Any) -> Task:
    """Build task `name`; unknown names and options are user errors that list what exists."""
    _discover()
    if name not in _FACTORIES:
        raise DataError(f"unknown task {name!r} (task.name); known tasks: {', '.join(names())}")
    try:
        task = _FACTORIES[name](**options)
    except TypeError as e:
        if "unexpected keyword argument" in str(e):
            raise DataError(f"task {name!r}: {e} (check task.options)") from None
        raise
    return _Guarded(task)


def for_run(name: str, options: dict[str, Any], run_dir: str | Path) -> Task:
    """Task `name` as a stage of the run in `run_dir` checks with it: a code task keeps its
    sandboxed results in the run's store, so every stage of the run runs a program once."""
    task = get(name, **options)
    runs = getattr(task, "sandbox_runs", None)
    if runs is not None:
        runs.keep_in(layout.sandbox_results(run_dir))
    return task


class _Guarded:
    """A task whose splits are handed out through the split guard (`base.note_read`)."""

    def __init__(self, task: Task) -> None:
        self._task = task

    def __getattr__(self, name: str) -> Any:
        return getattr(self._task, name)

    def problems(self, split: str) -> list[Problem]:
        note_read(self._task.name, split)
        return self._task.problems(split)


__all__ = ["DataError", "Problem", "Task", "Verdict", "for_run", "get", "names", "reading_as", "reads", "register"]
