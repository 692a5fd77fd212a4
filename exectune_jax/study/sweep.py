"""Ablation (d), `--sensitivity`: how the rows move with the simulated world.

One value of the world is varied at a time around the run's own (SWEEP: the teacher's habit rate,
the core's chance of carrying out a two-operation step, the judge's two error rates, how often an
off-track core starts again and what a named operation is worth; values and their rationale in
docs/world.md; `--sweep NAME,...` picks some of them), each other value one whole demo in
run_dir/sensitivity/<value>/seed-N with
`sim.world` naming it, for one seed (`--seeds` for more); the run's own world at each seed is
that seed's demo. A finished world is read back, and one whose results.json names another world
is refused. Each world's rows are aggregated like the main ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from exectune_jax.config import Config
from exectune_jax.demo.recipe import with_values
from exectune_jax.errors import UserError
from exectune_jax.study.across_seeds import aggregate
from exectune_jax.study.seeds import demo_results, seed_config, seed_dir
from exectune_jax.world import HABIT_RATE, value_of, world_from

# Ablation (d): each swept world value -> the values it takes, the run's own among them
SWEEP: dict[str, tuple[float, ...]] = {
    HABIT_RATE: (0.0, 0.4, 0.8),  # no habit, a minority of proposals, version 3 (default: GSM8K's 0.15)
    "follow_compound": (0.25, 0.55, 0.85),  # as hard as a vague step, the default, as easy as prose
    # the judge's errors: around version 3's (0 and 0.04, on top of its lenient reading), up to a
    # judge as lenient as MT-Bench's overall disagreement twice over, and three in a hundred
    # followed executions more misread
    "judge_false_yes": (0.0, 0.15, 0.3),
    "judge_false_no": (0.0, 0.04, 0.1),
    "core_recovers": (0.0, 0.5, 1.0),  # version 2's sure failure, half, version 3's
    "named_op_value": (0.0, 0.5, 1.0),  # worthless as in version 2, version 3's, as good as done
}
SWEEP_AXES = {HABIT_RATE: "teacher habit rate (compound share at habit sites)",
              "follow_compound": "follow_compound (P core carries out a 2-operation step)",
              "judge_false_yes": "judge_false_yes (P judge passes a strategy not followed)",
              "judge_false_no": "judge_false_no (P judge fails a followed strategy)",
              "core_recovers": "core_recovers (P off-track core starts again)",
              "named_op_value": "named_op_value (operation named, not carried out)"}
SENSITIVITY = "sensitivity"  # the sweep's worlds under run_dir, and its section of study.json
SENSITIVITY_PLOT = "study_sensitivity.png"


def swept_names(text: str | None) -> list[str]:
    """The world values `--sensitivity` sweeps: all of SWEEP, or the comma-separated ones `--sweep`
    names."""
    if not text:
        return list(SWEEP)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SWEEP]
    if unknown or not names:
        raise UserError(f"--sweep {text!r}: {', '.join(unknown) or 'no value'} is not a swept world "
                        f"value; name some of {', '.join(SWEEP)}, or leave --sweep out for all")
    return [n for n in SWEEP if n in names]


def variants(overrides: Mapping[str, Any], names: Sequence[str] = tuple(SWEEP)
             ) -> list[tuple[str, float, dict[str, Any]]]:
    """(value name, value, sim.world overrides) of each world the sweep adds to the run's own:
    every value of SWEEP under `names` other than the one the run's world has."""
    base = world_from(overrides)
    return [(name, value, {**overrides, name: value})
            for name in names for value in SWEEP[name] if value != value_of(base, name)]


def variant_dir(root: Path, name: str, value: float) -> Path:
    return root / SENSITIVITY / f"{name}-{value:g}"


def world_rows(overrides: Mapping[str, Any], results: Mapping[int, Mapping[str, Any]],
               dirs: Mapping[int, Path], names: Sequence[str] = tuple(SWEEP)) -> dict[str, Any]:
    """One world of the sweep: its swept values, what its runs recorded of it, and its rows
    aggregated over seeds; a run recorded in another world is refused."""
    world = world_from(overrides)
    for seed, doc in results.items():
        if doc["world"]["hash"] != world.hash:
            raise UserError(f"{dirs[seed]} ran in world {doc['world']['hash']}, not the sweep's "
                            f"{world.hash} ({dict(overrides)}); delete it or use another run_dir")
    agg = aggregate(results)
    return {"values": {name: value_of(world, name) for name in names}, "world": agg["world"],
            "rows": agg["rows"]}


def run_sweep(cfg: Config, seeds: Sequence[int], quick: bool, names: Sequence[str] = tuple(SWEEP)
              ) -> dict[str, Any] | None:
    """Ablation (d): the run's own world (each seed's demo) and every variant of it in the values
    `names`, each world's rows aggregated over `seeds`; None when a demo stopped."""
    root = Path(cfg.run_dir)
    try:
        added = variants(cfg.sim.world, names)
    except ValueError as e:
        raise UserError(f"the sensitivity sweep sets {', '.join(names)} on top of sim.world: {e}") from None
    runs = [(dict(cfg.sim.world), root, "")]
    runs += [(overrides, variant_dir(root, name, value), f"world {name}={value:g}, ")
             for name, value, overrides in added]
    worlds = []
    for overrides, where, what in runs:
        dirs = {s: seed_dir(where, s) for s in seeds}
        results = {}
        for s in seeds:
            cfg_s = with_values(seed_config(cfg, s), {"sim.world": overrides})
            got = demo_results(cfg_s, dirs[s], quick, f"{what}seed {s}")
            if got is None:
                return None
            results[s] = got
        worlds.append(world_rows(overrides, results, dirs, names))
    return {"seeds": list(seeds), "swept": {name: list(SWEEP[name]) for name in names},
            "worlds": worlds}


def sweep_points(sweep: Mapping[str, Any]) -> dict[str, list[tuple[float, list]]]:
    """Per swept value, its axis label -> (value, rows) of each world that differs from the
    run's own (the first) in that value alone, the run's own included."""
    own = sweep["worlds"][0]["values"]
    return {SWEEP_AXES.get(name, name): [
        (w["values"][name], w["rows"]) for w in sweep["worlds"]
        if all(w["values"][k] == own[k] for k in sweep["swept"] if k != name)]
        for name in sweep["swept"]}
