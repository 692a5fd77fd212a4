"""What a stage ran with: `run_dir/<stage>/config.yaml`, and the check a resume must pass.

Every stage writes the resolved config it runs with into its directory. A checkpointed stage
(sft, rl) that finds a checkpoint first compares the config it is given with the one it was
started with: a difference in a field that changes what it computes (its own section, the
model, the task, the seed, and for RL the endpoints' models and sampling and the simulated
world) stops it with one line naming the fields and the way out, a new run_dir or
`resume.allow_changes=[...]`. Fields
that only change how a run is carried out or watched (checkpoint cadence, retries, rate limits,
the budget, server addresses, the mesh) may change freely: resuming on another topology or with a
larger budget is the normal case.

The acceptance stage (`sample`) is held to the same check against its config.yaml, since a
rerun would replace the dataset SFT trained on. And each stage fingerprints the files it reads
(`inputs.json`: SHA-256 of SFT's dataset, of the guide RL starts from): a resume whose inputs
changed since the stage started — `sample` rerun after `sft` began — stops with one line
instead of continuing a run trained on other data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path

from exectune_jax import layout
from exectune_jax.config import Config, dump, flat, load_config
from exectune_jax.errors import UserError
from exectune_jax.io import write_json_atomic

log = logging.getLogger(__name__)

CONFIG_FILE = layout.STAGE_CONFIG
# dotted fields (exact, or a prefix ending in ".") that change what a resumed stage computes
RUN_FIELDS = {
    "sample": ("seed", "task.", "sample.", "api.", "sim.seed", "sim.world"),
    "sft": ("seed", "model.", "task.", "sft.", "sample.out"),
    "rl": ("seed", "model.", "task.", "api.", "sim.seed", "sim.world", "rl.", "sft.name"),
}
# ... except these, which change how the run is carried out or watched, not its results
INERT = re.compile(
    r"^(sft\.(checkpoint_every|keep_checkpoints|eval_every|eval_problems|eval_max_new_tokens)"
    r"|rl\.(checkpoint_every|keep_checkpoints)"
    r"|api\.(concurrency|rpm|tpm|max_retries|backoff_base_s|backoff_max_s|circuit_breaker_\w+"
    r"|budget_usd|max_failure_share)"
    r"|api\.\w+\.(base_url|api_key_env|timeout_s))$")
_MISSING = object()


class ResumeError(UserError):
    """A resume whose config changes the run it continues."""


def changes(before: Config, now: Config, kind: str) -> list[tuple[str, object, object]]:
    """(field, old value, new value) for every field that differs and changes a `kind` run."""
    old, new = flat(before), flat(now)
    keys = list(new) + [k for k in old if k not in new]
    return [(k, old.get(k, _MISSING), new.get(k, _MISSING)) for k in keys
            if old.get(k, _MISSING) != new.get(k, _MISSING) and _changes_run(k, kind)]


def _changes_run(key: str, kind: str) -> bool:
    fields = RUN_FIELDS[kind]
    hit = any(key == f or (f.endswith(".") and key.startswith(f)) for f in fields)
    return hit and not INERT.match(key)


def _shown(value: object) -> str:
    return "unset" if value is _MISSING else repr(value)


def check_resume(cfg: Config, stage_dir: Path, kind: str) -> None:
    """Refuse a resume whose config differs from the stage's config.yaml where it matters."""
    path = stage_dir / CONFIG_FILE
    if not path.is_file():
        return
    allowed = set(cfg.resume.allow_changes)
    changed = [c for c in changes(load_config(path), cfg, kind) if c[0] not in allowed]
    if changed:
        what = ", ".join(f"{k} {_shown(a)} -> {_shown(b)}" for k, a, b in changed)
        names = ",".join(k for k, _, _ in changed)
        raise ResumeError(f"{stage_dir}: resuming with a config that changes the run ({what}; "
                          f"started with {path}); start a new run_dir, or keep going with "
                          f"resume.allow_changes=[{names}]")


def fingerprint(path: Path) -> str:
    """SHA-256 of a file, or of a directory's files (names and contents, in sorted order)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def check_inputs(stage_dir: Path, inputs: Mapping[str, Path]) -> None:
    """Refuse to continue a stage whose input files changed since it started."""
    path = stage_dir / layout.STAGE_INPUTS
    if not path.is_file():
        return
    before = json.loads(path.read_text())
    changed = [name for name, f in inputs.items()
               if name in before and Path(f).exists() and fingerprint(Path(f)) != before[name]]
    if changed:
        what = ", ".join(f"{name} ({inputs[name]})" for name in changed)
        raise ResumeError(f"{stage_dir}: its input changed since the stage started: {what}; "
                          "start a new run_dir, or delete the stage directory to train again "
                          "on the new input")


def record_inputs(stage_dir: Path, inputs: Mapping[str, Path]) -> None:
    write_json_atomic(stage_dir / layout.STAGE_INPUTS,
                      {name: fingerprint(Path(f)) for name, f in inputs.items() if Path(f).exists()})


def begin_sample(cfg: Config, stage_dir: Path) -> None:
    """Before acceptance sampling: a rerun in a directory that already has a config.yaml must
    not change the data it produces; then this config is recorded."""
    check_resume(cfg, stage_dir, "sample")
    record(cfg, stage_dir)


def record(cfg: Config, stage_dir: Path, *, write: bool = True) -> Path:
    """Create `stage_dir` and write the config the stage runs with to its config.yaml (when
    `write`: process 0 of a multi-process run)."""
    path = stage_dir / CONFIG_FILE
    stage_dir.mkdir(parents=True, exist_ok=True)
    if write:
        dump(cfg, path)
    return path


def resumed(stage: str, step: int) -> None:
    """The line every resume shows the user."""
    log.info("resumed %s from step %d", stage, step)


def begin(cfg: Config, stage_dir: Path, kind: str, ckpt, *, write: bool = True,
          inputs: Mapping[str, Path] | None = None) -> None:
    """Before a training stage's first step: a resume (`ckpt` has a step) must match the config
    it was started with and read the same `inputs` (else `ckpt` is closed and the ResumeError
    raised); then this config and the inputs' fingerprints are recorded."""
    inputs = inputs or {}
    if ckpt.latest_step() is not None:
        try:
            check_resume(cfg, stage_dir, kind)
            check_inputs(stage_dir, inputs)
        except ResumeError:
            ckpt.close()
            raise
    record(cfg, stage_dir, write=write)
    if write:
        record_inputs(stage_dir, inputs)
