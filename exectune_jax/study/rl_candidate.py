"""The validation run's candidate arm (`exectune study --rl-validation --candidate KEY=VALUE`):
the RL stage of the default arm with the candidate's rl.* settings, checked before any stage runs.

The two arms train RL from the same SFT guide in the same seed directory, so the candidate may
change rl.* settings only (anything else would change the stages the arms share), and neither
`rl.name` (the arm's directory) nor `rl.init` (the shared SFT guide). A candidate that leaves the
RL config as the default arm's is refused: its verdict would compare a run with itself.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from exectune_jax import layout
from exectune_jax.config import Config, apply_overrides, load_config, parse_override
from exectune_jax.data import tasks
from exectune_jax.demo.recipe import with_values
from exectune_jax.errors import UserError
from exectune_jax.resume import changes
from exectune_jax.train.problem_pool import WHOLE, pool_range

SOURCE = "--candidate"
ARM = "rl_candidate"  # the candidate arm's stage directory in each seed's directory
SHARED = {"rl.name": "the arm's directory", "rl.init": "the SFT guide both arms start from"}
EXAMPLE = "--candidate 'rl.problems=after_sample rl.max_extra_groups=8'"
_OVERRIDE = re.compile(r"[A-Za-z_][\w.]*=")


def overrides(values: Sequence[str]) -> list[str]:
    """The candidate's overrides from the --candidate values: a value whose every
    whitespace-separated word is KEY=VALUE holds that many overrides (`--candidate
    'rl.problems=after_sample rl.max_extra_groups=8'`); any other value is one override, so a
    YAML flow value keeps its spaces (`--candidate 'rl.weights={improve: 1, harm: 0}'`)."""
    out = []
    for value in values:
        words = value.split()
        out += words if len(words) > 1 and all(_OVERRIDE.match(w) for w in words) else [value]
    return out


def check_keys(candidate: Sequence[str]) -> None:
    """A one-line UserError for no candidate, a malformed override, a key outside rl.* or one
    the arms must share."""
    if not candidate:
        raise UserError(f"--rl-validation compares the RL default with a candidate: give the rl.* "
                        f"settings it changes as {SOURCE} KEY=VALUE (e.g. {EXAMPLE})")
    for text in candidate:
        parts, _ = parse_override(text, SOURCE)
        key = ".".join(parts)
        if parts[0] != "rl" or len(parts) < 2:
            raise UserError(f"{SOURCE} {text!r}: only rl.* settings may differ between the arms, "
                            "which share every stage up to SFT")
        if key in SHARED:
            raise UserError(f"{SOURCE} {text!r}: the validation run sets `{key}` ({SHARED[key]})")


def candidate_arm(rl_stage: Config, candidate: Sequence[str]) -> Config:
    """The candidate arm's stage config: the default arm's `rl_stage` with the candidate's
    overrides layered on as the command line layers them (validated like any override), in its
    own directory."""
    check_keys(candidate)
    arm = apply_overrides(rl_stage, candidate, SOURCE)
    if arm.rl == rl_stage.rl:
        raise UserError(f"{SOURCE} {' '.join(candidate)} leaves the RL config as the default "
                        "arm's; name a setting that differs from it")
    return with_values(arm, {"rl.name": ARM})


def check_pool(arm: Config) -> None:
    """The candidate's `rl.problems` leaves RL a pool under the run's task and sample sizes (the
    RL stage would refuse it only after acceptance sampling and SFT)."""
    if arm.rl.problems != WHOLE:
        train = tasks.get(arm.task.name, **arm.task.options).problems("train")
        pool_range(arm.rl.problems, len(train), arm.sample.n_problems)


def check_ran_with(seed_dir: Path, arm: Config) -> None:
    """Refuse a seed whose candidate arm already ran (or began) with other RL settings than
    `arm`'s: its results would be read back, or resumed, under this candidate's name."""
    recorded = layout.stage(seed_dir, ARM) / layout.STAGE_CONFIG
    if not recorded.is_file():
        return
    changed = changes(load_config(recorded), arm, "rl")
    if changed:
        what = ", ".join(f"{k} {a!r}" for k, a, _ in changed)
        raise UserError(f"{recorded.parent} ran with {what}, which this {SOURCE} does not give; "
                        "give the candidate it ran with, or a new run_dir")
