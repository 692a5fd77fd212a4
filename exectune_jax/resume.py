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
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from exectune_jax.config import Config, dump, flat, load_config
from exectune_jax.errors import UserError

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
# dotted fields (exact, or a prefix ending in ".") that change what a resumed stage computes
RUN_FIELDS = {
    "sft": ("seed", "model.", "task.", "sft.", "sample.out"),
    "rl": ("seed", "model.", "task.", "api.", "sim.seed", "sim.world", "rl.", "sft.name"),
}
# ... except these, which change how the run is carried out or watched, not its results
INERT = re.compile(
    r"^(sft\.(checkpoint_every|keep_checkpoints|eval_every|eval_problems|eval_max_new_tokens)"
    r"|rl\.(checkpoint_every|keep_checkpoints)"
    r"|api\.(concurrency|rpm|tpm|max_retries|backoff_base_s|backoff_max_s|circuit_breaker_\w+"
    r"|budget_usd)"
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


def begin(cfg: Config, stage_dir: Path, kind: str, ckpt, *, write: bool = True) -> None:
    """Before a training stage's first step: a resume (`ckpt` has a step) must match the config
    it was started with (else `ckpt` is closed and the ResumeError raised); then this config is
    recorded as the stage's config.yaml."""
    if ckpt.latest_step() is not None:
        try:
            check_resume(cfg, stage_dir, kind)
        except ResumeError:
            ckpt.close()
            raise
    record(cfg, stage_dir, write=write)
