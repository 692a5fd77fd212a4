"""`exectune study`: the demo pipeline over several seeds, and what holds across them.

Rooms: `seeds` (one demo per seed), `across_seeds` (mean ± sd, per-seed and pooled McNemar
tests), `ablations` (three more guides per seed), `sweep` (ablation (d): the demo in the worlds
around the run's own), `lambdas` (RL's cost weight swept: the accuracy-vs-USD frontier),
`tables` (study.md and study.json) and `rl_validation` (the validation run of docs/rl.md).

Writes run_dir/study.json (every number), study.md, which the README's table is copied from, and
study_accuracy_vs_alpha.png (every seed of every row, and the mean ± sd); a sweep adds its section
to both (a run of one kind keeps the others' as they were) and study_sensitivity.png; a λ sweep
its section and study_pareto.png.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from exectune_jax import plots
from exectune_jax.config import Config
from exectune_jax.demo.recipe import with_task
from exectune_jax.errors import UserError
from exectune_jax.study.ablations import ABLATIONS, ablations_complete, run_ablations
from exectune_jax.study.across_seeds import aggregate, all_rows
from exectune_jax.study.lambdas import LAMBDAS, PARETO_PLOT, frontier, others, parse_lambdas, run_lambda_sweep
from exectune_jax.study.rl_validation import run_rl_validation
from exectune_jax.study.seeds import demo_results, parse_seeds, seed_config, seed_dir
from exectune_jax.study.sweep import SENSITIVITY, SENSITIVITY_PLOT, run_sweep, swept_names, sweep_points
from exectune_jax.study.tables import (STUDY_JSON, STUDY_MD, STUDY_PLOT, lambdas_table, main_table, save,
                                       sweep_table)

__all__ = ["run"]


def run(cfg: Config, seeds: str | None = None, quick: bool = False, ablations: bool = True,
        sensitivity: bool = False, sweep: str | None = None, rl_validation: bool = False,
        candidate: Sequence[str] | None = None, task: str | None = None, lambdas: str | None = None,
        task_named: bool = False, **_: Any) -> int:
    """`exectune study`: one demo per seed (finished seeds are read back), then study.json/md;
    with `sensitivity`, the sweep of ablation (d) instead (seed 0 unless `seeds` says; `sweep`
    names some of its world values, comma-separated); with
    `rl_validation`, the validation run of the default RL against `candidate` instead; with
    `lambdas`, RL's cost weight swept instead (seed 0 unless `seeds` says); `task`: the demo's
    `--task`, for every demo it runs (`task_named`: the config also names task.name)."""
    cfg = with_task(cfg, task, task_named)
    root = Path(cfg.run_dir)
    if candidate and not rl_validation:
        raise UserError("--candidate names the second RL arm of --rl-validation; add "
                        "--rl-validation, or leave it out")
    if sweep is not None and not sensitivity:
        raise UserError("--sweep names the world values of --sensitivity; add --sensitivity, or leave it out")
    if sum((sensitivity, rl_validation, lambdas is not None)) > 1:
        raise UserError("--sensitivity, --rl-validation and --lambdas are three studies; run one at a time")
    if lambdas is not None:
        return _lambda_study(cfg, parse_lambdas(lambdas), parse_seeds(seeds or "0", least=1), quick)
    if rl_validation:
        return run_rl_validation(cfg, parse_seeds(seeds or "0,1,2", least=1), quick,
                                 candidate or [])
    if sensitivity:
        swept = run_sweep(cfg, parse_seeds(seeds or "0", least=1), quick, swept_names(sweep))
        if swept is None:
            return 1
        save(root, {SENSITIVITY: swept})
        n = len(swept["seeds"])
        plots.sensitivity(sweep_points(swept), root / SENSITIVITY_PLOT,
                          f"Rows against the world's values ({'mean ± sd over ' if n > 1 else ''}"
                          f"{n} seed{'s' if n > 1 else ''}; dotted: the run's own world)")
        print(sweep_table(swept) + f"\nwritten to {root / STUDY_JSON}, {root / STUDY_MD} and "
              f"{root / SENSITIVITY_PLOT}")
        return 0
    chosen = parse_seeds(seeds or "0,1,2")
    results, ablated = {}, {}
    for seed in chosen:
        out = seed_dir(root, seed)
        seed_cfg = seed_config(cfg, seed)
        ablations_done = out / ABLATIONS / "results.json"
        step = f"seed {seed} ({chosen.index(seed) + 1}/{len(chosen)})"
        got = demo_results(seed_cfg, out, quick, step)
        if got is None:
            return 1
        results[seed] = got
        step += f" in {out}"
        if ablations and not ablations_complete(ablations_done):
            print(f"exectune study: ablations of {step}")
            if not run_ablations(seed_cfg, out, quick):
                print(f"exectune study: seed {seed}'s ablations stopped; run the same command "
                      "again to resume")
                return 1
        if ablations:
            ablated[seed] = json.loads(ablations_done.read_text())
    study = aggregate(results)
    if ablations:
        study["ablations"] = aggregate(ablated)
    study = save(root, study)
    plots.seeds_accuracy_vs_alpha(all_rows(study), root / STUDY_PLOT)
    print(main_table(study) + f"\nwritten to {root / STUDY_JSON}, {root / STUDY_MD} and {root / STUDY_PLOT}")
    return 0


def _lambda_study(cfg: Config, lambdas: list[float], seeds: list[int], quick: bool) -> int:
    """`--lambdas`: the sweep, its section of study.json and study.md, and the frontier plot."""
    root = Path(cfg.run_dir)
    sweep = run_lambda_sweep(cfg, seeds, quick, lambdas)
    if sweep is None:
        return 1
    save(root, {LAMBDAS: sweep})
    n = len(seeds)
    plots.pareto(frontier(sweep["rows"]), others(sweep["rows"]), root / PARETO_PLOT,
                 f"Accuracy vs USD, RL's cost weight λ swept ({'mean ± sd over ' if n > 1 else ''}"
                 f"{n} seed{'s' if n > 1 else ''})")
    print(lambdas_table(sweep) + f"\nwritten to {root / STUDY_JSON}, {root / STUDY_MD} and {root / PARETO_PLOT}")
    return 0
