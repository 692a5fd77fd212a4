"""What the code tasks share: pull the program out of a reply, run it against the tests in
the sandbox, and give the pass@1 verdict; plus row reading for local files and the hub.

A reply may hold its code in a fenced block (```python ... ```), possibly among prose and
example blocks, or be bare code. A task turns the extracted code into one test program
(`CodeTask.test_program`); the program passes when it runs to its end, i.e. every test ran
and none failed. Each distinct test program runs once per task object (`SandboxRuns`): the
same code for the same problem comes back often (one strategy executed again, several
strategies the core carried out to the same lines, guides that write the same strategy).
A stage of a run keeps those results in the run's store (`layout.sandbox_results`), so the
stages after it, and stages running beside it, read them back instead of running the program
again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from functools import lru_cache
from pathlib import Path

from exectune_jax import io, sandbox
from exectune_jax.data.tasks.base import DataError, Problem, Verdict, read_jsonl, require

# An opening fence may follow prose on its line; a closing fence starts or ends a line, so a
# ``` inside a string literal does not cut the code short.
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:^[ \t]*```|```[ \t]*$|\Z)", re.DOTALL | re.MULTILINE)
_PYTHON_TAGS = ("", "python", "py", "python3", "py3")
NO_CODE = "no code found"
# How a test program says its own imports failed, before any of the reply's code ran.
VERIFIER_MISSING = "verifier dependency missing"


def extract_code(text: str, entry_point: str | None = None) -> str | None:
    """The code in a reply, or None when there is none.

    Among fenced Python (or untagged) blocks, the first that defines `entry_point` wins, else
    the first block; an unclosed fence (a reply cut at its token limit) runs to the end. A
    reply without fences is taken as bare code.
    """
    blocks = [body for tag, body in _FENCE.findall(text) if tag.lower() in _PYTHON_TAGS]
    if not blocks and "```" not in text:
        blocks = [text]
    if entry_point:
        defining = [b for b in blocks if defines(b, entry_point)]
        blocks = defining or blocks
    code = blocks[0].strip("\n") if blocks else ""
    return code if code.strip() else None


def defines(code: str, name: str) -> bool:
    """Whether `code` defines function or class `name` at some indentation."""
    return re.search(rf"^[ \t]*(?:async[ \t]+)?(?:def|class)[ \t]+{re.escape(name)}\b", code, re.MULTILINE) is not None


def complete_function(prompt: str, code: str, entry_point: str) -> str:
    """The candidate module for a prompt that ends in a function's signature and docstring.

    Code that defines `entry_point` itself replaces the prompt's function but keeps what the
    prompt puts above it (imports, helper functions); other code is the function's body.
    """
    if defines(code, entry_point):
        match = re.search(rf"^(?:async[ \t]+)?def[ \t]+{re.escape(entry_point)}\b", prompt, re.MULTILINE)
        header = prompt[: match.start()] if match else ""
        return f"{header}{code}\n"
    return f"{prompt}{indent_body(code)}\n"


def indent_body(code: str) -> str:
    """Indent a function body written flush left (some replies drop the indentation)."""
    first = next((line for line in code.splitlines() if line.strip()), "")
    if first[:1] in (" ", "\t"):
        return code
    return "\n".join(f"    {line}" if line.strip() else line for line in code.splitlines())


class SandboxRuns:
    """The sandboxed result of each distinct test program, run once.

    A program's result is its verdict's whole input (the code, the problem's tests, the
    limits), so a second check of the same program reads the first one's result; checks of one
    program that overlap wait for its one run. A run that raised (the sandbox could not be set
    up) is not kept, so the next check tries again. With a store (`keep_in`), results are also
    appended to a JSONL file and read back from it, including those that other processes append
    while this one runs. `runs`, `reused` and `stored` (read from the store) count what happened.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._results: dict[str, Future] = {}
        self._store: Path | None = None
        self._store_read = 0  # bytes of the store already read
        self._stored: dict[str, sandbox.SandboxResult] = {}
        self.runs = 0
        self.reused = 0
        self.stored = 0

    def keep_in(self, store: str | Path) -> None:
        """Keep results in `store` (JSONL) from now on, and read back those already there."""
        self._store = Path(store)
        io.cut_torn_tail(self._store)  # a crash mid-append: the next line starts whole

    def result(self, key: str, run: Callable[[], sandbox.SandboxResult]) -> sandbox.SandboxResult:
        with self._lock:
            pending = self._results.get(key)
            if pending is None:
                pending = self._results[key] = Future()
                kept = self._read_store(key)
                if kept is not None:
                    self.stored += 1
                    pending.set_result(kept)
                    return kept
                self.runs += 1
                owner = True
            else:
                self.reused += 1
                owner = False
        if not owner:
            return pending.result()
        try:
            result = run()
        except BaseException as e:  # noqa: BLE001 - whatever the run raised, its waiters raise too
            with self._lock:
                del self._results[key]
            pending.set_exception(e)
            raise
        if self._store is not None and replayable(result):
            io.append_jsonl(self._store, {"key": key, "result": dataclasses.asdict(result)})
        pending.set_result(result)
        return result

    def _read_store(self, key: str) -> sandbox.SandboxResult | None:
        """`key`'s stored result, reading first what was appended since the last read."""
        if self._store is None:
            return None
        if key not in self._stored and self._store.exists():
            with open(self._store, "rb") as f:
                f.seek(self._store_read)
                data = f.read()
            whole = data[: data.rfind(b"\n") + 1]  # a line still being appended is read next time
            self._store_read += len(whole)
            for line in whole.decode("utf-8").splitlines():
                try:
                    row = json.loads(line)
                    self._stored[row["key"]] = sandbox.SandboxResult(**row["result"])
                except (ValueError, KeyError, TypeError):
                    continue  # the store is a copy: a line it cannot read is a program run again
        return self._stored.get(key)


# Results that say more about the machine at the time (its load, its other processes, its disk)
# than about the program: run again rather than kept for other stages.
_MACHINE_REASONS = ("timeout", "process_limit", "disk_full", "killed")


def replayable(result: sandbox.SandboxResult) -> bool:
    """Whether a result is the program's own, so that a later check may read it back."""
    return not result.reason.startswith(_MACHINE_REASONS)


def program_key(program: str, files: Mapping[str, str], env: Mapping[str, str], timeout_s: float,
                memory_mb: int) -> str:
    """What decides a sandboxed run's result, hashed; the interpreter's version is part of it,
    since a stored result may be read by a later run with another."""
    doc = json.dumps([program, sorted(files.items()), sorted(env.items()), timeout_s, memory_mb, sys.version])
    return hashlib.sha256(doc.encode()).hexdigest()


class CodeTask:
    """Base of the code tasks: loading is per task, checking is shared.

    Options common to all code tasks: `timeout_s` (wall clock per check) and `memory_mb`.
    """

    family = "code"
    name = "code"
    requires: tuple[str, ...] = ()  # modules the test program itself imports in the sandbox

    def __init__(self, timeout_s: float = 10.0, memory_mb: int = 512) -> None:
        if not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
            raise DataError(f"task option timeout_s={timeout_s!r}: must be a positive number of seconds")
        if not (isinstance(memory_mb, int) and memory_mb >= 64):
            raise DataError(f"task option memory_mb={memory_mb!r}: must be a whole number >= 64")
        self.timeout_s, self.memory_mb = float(timeout_s), memory_mb
        self.sandbox_runs = SandboxRuns()
        failure = unimportable(self.requires)
        if failure:
            raise DataError(
                f"task {self.name} checks replies with {', '.join(self.requires)} inside the sandbox, which cannot "
                f"import it here ({failure}); install the project's dependencies: pip install -c constraints.txt -e ."
            )

    def test_program(self, problem: Problem, code: str) -> tuple[str, dict[str, str]]:
        """(program, extra files) that runs `code` against the problem's tests."""
        raise NotImplementedError

    def sandbox_env(self) -> dict[str, str]:
        return {}

    def check(self, problem: Problem, text: str) -> Verdict:
        """pass@1: run the reply's code against every test once; the reason names the failure."""
        code = extract_code(text, problem.meta.get("entry_point"))
        if code is None:
            return Verdict(correct=False, extracted=None, reason=NO_CODE)
        program, files = self.test_program(problem, code)
        env = self.sandbox_env()
        result = self.sandbox_runs.result(
            program_key(program, files, env, self.timeout_s, self.memory_mb),
            lambda: sandbox.run(program, timeout_s=self.timeout_s, memory_mb=self.memory_mb, files=files, env=env))
        return verdict_of(result, code, self.name)


def verdict_of(result: sandbox.SandboxResult, code: str, task: str) -> Verdict:
    """The verdict of a sandboxed run; a test program that could not import its own
    dependencies judged nothing, so that is a `SandboxError` (excluded and counted), never a
    wrong answer."""
    missing = f"RuntimeError: {VERIFIER_MISSING}"
    if not result.passed and result.detail.startswith(missing):
        raise sandbox.SandboxError(f"task {task}: the test program {result.detail.removeprefix('RuntimeError: ')}")
    return Verdict(correct=result.passed, extracted=code, reason="" if result.passed else result.reason)


@lru_cache(maxsize=None)
def unimportable(modules: tuple[str, ...]) -> str:
    """Why the sandbox cannot import `modules` ("" when it can), found by trying it once."""
    if not modules:
        return ""
    try:
        probe = sandbox.run("".join(f"import {m}\n" for m in modules), timeout_s=30)
    except sandbox.SandboxError:
        return ""  # no sandbox here at all: every check reports that, excluded and counted
    return "" if probe.passed else " ".join((probe.detail or probe.reason).split())


# ---------------------------------------------------------------- reading rows


Rows = Iterator[tuple[str, dict]]  # (where the row came from, the row)


def local_rows(path: str | Path, required: Mapping[str, type | tuple[type, ...]]) -> Rows:
    """Rows of a JSONL file (plain or .gz), each with its "file:line" for error messages."""
    for line, row in read_jsonl(path, required):
        yield f"{path}:{line}", row


def hub_rows(task: str, hf_id: str, split: str, required: Mapping[str, type | tuple[type, ...]],
             config: str | None = None) -> Rows:
    """Rows of a Hugging Face dataset split; needs `datasets` and the network."""
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"task {task} hf_id={hf_id!r} needs the `datasets` package (pip install datasets) and network; "
            "offline, download the data and set task.options.path"
        ) from None
    try:
        rows = datasets.load_dataset(hf_id, config, split=split)
    except Exception as e:  # the hub client raises many kinds; all mean "not loadable here"
        raise DataError(
            f"task {task}: could not load {hf_id!r} split {split!r} ({type(e).__name__}: {e}); "
            "offline, set task.options.path to a local JSONL file"
        ) from None
    for i, row in enumerate(rows):
        where = f"{hf_id}[{split}] row {i}"
        yield where, require(dict(row), where, required)


def string_list(row: dict, where: str, name: str) -> list[str]:
    """Field `name` as a list of strings (e.g. MBPP's asserts), or a DataError naming it."""
    value = row.get(name)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise DataError(f"{where}: field {name!r} must be a list of strings, got {type(value).__name__}")
    return value
