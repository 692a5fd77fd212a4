"""study.md: the main table and the ablations', mean ± sd over seeds with per-seed and pooled
tests, then the sensitivity sweep's, one table per measure, and the cost-weight sweep's; and
study.json beside it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from exectune_jax.io import write_json_atomic, write_text_atomic
from exectune_jax.study.lambdas import (
    LAMBDAS,
    PARETO_PLOT,
    cheaper_and_better,
    frontier,
    others,
)
from exectune_jax.study.sweep import SENSITIVITY, SENSITIVITY_PLOT

STUDY_PLOT = "study_accuracy_vs_alpha.png"
STUDY_JSON, STUDY_MD = "study.json", "study.md"
SECTIONS = (SENSITIVITY, LAMBDAS)  # the sweeps: each kept apart from the seeds' study and the other
SWEEP_TABLES = (("accuracy", "Accuracy %", 100, 1), ("executability", "Executability α %", 100, 1),
                ("usd_per_problem", "USD per problem", 1, 6))


def _pm(cell: Mapping[str, Any] | None, scale: float, digits: int, seeds: bool = False,
        sd: bool = True) -> str:
    """"mean ± sd" (without `sd`: the mean), and with `seeds` each seed's value after it."""
    if cell is None:
        return "–"
    text = f"{cell['mean'] * scale:.{digits}f}"
    if sd:
        text += f" ± {cell['sd'] * scale:.{digits}f}"
    if seeds:
        text += " (" + ", ".join(f"{v * scale:.{digits}f}" for v in cell["per_seed"]) + ")"
    return text


def table(study: Mapping[str, Any]) -> str:
    """study.md: the main table and the ablations', mean ± sd over seeds, per-seed and pooled
    tests; then the sensitivity sweep's and the cost-weight sweep's, where the study has them."""
    text = main_table(study) if "rows" in study else ""
    if SENSITIVITY in study:
        text += sweep_table(study[SENSITIVITY])
    if LAMBDAS in study:
        text += lambdas_table(study[LAMBDAS])
    return text


def main_table(study: Mapping[str, Any]) -> str:
    seeds = ", ".join(str(s) for s in study["seeds"])
    head = (f"Seeds {seeds} ({len(study['seeds'])} runs of `exectune demo`), world version "
            f"{study['world']['version']} (`{study['world']['hash']}`), {study['problems']} "
            f"{study['split']} problems per seed. Mean ± sd over seeds; McNemar p against "
            f"{study['reference']} per seed and pooled over seeds (discordant pairs summed).\n\n")
    text = head + rows_table(study["rows"])
    if study.get("ablations"):
        text += ("\n## Ablations\n\n`outcome_rl_from_sft`: GRPO from exectune_sft with the outcome "
                 "term alone (same prompt and format gate); `exectune_rl_from_base`: ExecTune RL "
                 "from the base guide, no SFT; `sft_answer_only`: SFT on strategies accepted on the "
                 "answer alone (the paper's acceptance; the demo's also requires that the core "
                 "followed them at no more than its own cost). Scored by one more eval "
                 "stage per seed on the same problems, beside the demo's guides (whose rows repeat "
                 "the table above).\n\n"
                 + rows_table(study["ablations"]["rows"]))
    return text + f"\n![accuracy vs executability over seeds]({STUDY_PLOT})\n"


def rows_table(rows: Sequence[Mapping[str, Any]]) -> str:
    head = ("| method | accuracy % (per seed) | executability α % (per seed) | USD / problem "
            "| per seed: discordant (exectune right / other right), McNemar p "
            "| pooled discordant | pooled p |\n"
            "|---|---|---|---|---|---|---|\n")
    body = ""
    for r in rows:
        pooled = r.get("pooled")
        tests = zip(r.get("discordant_per_seed", []), r.get("mcnemar_p_per_seed", []))
        per_seed = "; ".join(f"{b} / {c}, {p:.3g}" for (b, c), p in tests) or "–"
        body += (f"| {r['method']} | {_pm(r['accuracy'], 100, 1, seeds=True)} "
                 f"| {_pm(r['executability'], 100, 1, seeds=True)} "
                 f"| {_pm(r['usd_per_problem'], 1, 6)} | {per_seed} | "
                 + (f"{pooled['exectune_right_other_wrong']} / {pooled['exectune_wrong_other_right']} "
                    f"| {pooled['mcnemar_p']:.3g} |" if pooled else "– | – |") + "\n")
    return head + body


def sweep_table(sweep: Mapping[str, Any]) -> str:
    """The sweep's section of study.md: per measure, one row per world, one column per method."""
    worlds, names, n = sweep["worlds"], list(sweep["swept"]), len(sweep["seeds"])
    methods = list(dict.fromkeys(r["method"] for w in worlds for r in w["rows"]))
    seeds = ", ".join(str(s) for s in sweep["seeds"])
    text = ("\n## Sensitivity to the world\n\nAblation (d): "
            + " and ".join(f"`{k}` ({', '.join(f'{v:g}' for v in sweep['swept'][k])})" for k in names)
            + " varied one at a time around the run's own world (first row); each world is one "
            f"`exectune demo` per seed (seed{'s' if n > 1 else ''} {seeds}) on the same problems, "
            "named by its hash. Values and their rationale: docs/world.md."
            + (" Mean ± sd over seeds." if n > 1 else " One seed: a row also moves by a few points "
               "from one seed to another in the same world (the seeds' sd above).") + "\n")
    head = ("| " + " | ".join([*(f"`{k}`" for k in names), "world", *methods]) + " |\n|"
            + "---|" * (len(names) + 1 + len(methods)) + "\n")
    for key, title, scale, digits in SWEEP_TABLES:
        text += f"\n{title}:\n\n" + head
        for w in worlds:
            cells = {r["method"]: r[key] for r in w["rows"]}
            text += ("| " + " | ".join([*(f"{w['values'][k]:g}" for k in names), f"`{w['world']['hash']}`",
                                        *(_pm(cells.get(m), scale, digits, sd=n > 1) for m in methods)])
                     + " |\n")
    return text + f"\n![accuracy, α and USD against each swept world value]({SENSITIVITY_PLOT})\n"


def lambdas_table(sweep: Mapping[str, Any]) -> str:
    """The cost-weight sweep's section of study.md: ExecTune per λ, then the other rows."""
    n, seeds = len(sweep["seeds"]), ", ".join(str(s) for s in sweep["seeds"])
    inside = set(cheaper_and_better(sweep["rows"]))
    text = ("\n## The cost weight λ\n\nExecTune RL from each seed's `exectune_sft` at each cost "
            "weight λ (`rl.weights.cost`, reward units per USD; the demo's own is "
            f"{sweep['own_lambda']:g}, its `exectune` guide), scored beside the demo's rows on "
            f"{sweep['problems']} {sweep['split']} problems, seed{'s' if n > 1 else ''} {seeds}"
            + (", mean ± sd over seeds" if n > 1 else "") + ". \"cheaper and better\": above "
            "core_strong's accuracy at a lower USD per problem.\n\n"
            "| method | λ | accuracy % | executability α % | USD / problem | cheaper and better |\n"
            "|---|---:|---|---|---|---|\n")
    for lam, r in frontier(sweep["rows"]):
        text += (f"| {r['method']} | {lam:g} | {_pm(r['accuracy'], 100, 1, sd=n > 1)} "
                 f"| {_pm(r['executability'], 100, 1, sd=n > 1)} | {_pm(r['usd_per_problem'], 1, 6, sd=n > 1)} "
                 f"| {'yes' if r['method'] in inside else 'no'} |\n")
    for r in others(sweep["rows"]):
        text += (f"| {r['method']} | – | {_pm(r['accuracy'], 100, 1, sd=n > 1)} "
                 f"| {_pm(r['executability'], 100, 1, sd=n > 1)} | {_pm(r['usd_per_problem'], 1, 6, sd=n > 1)} "
                 "| – |\n")
    return text + f"\n![accuracy against USD per problem, ExecTune at each λ]({PARETO_PLOT})\n"


def save(root: Path, part: Mapping[str, Any]) -> dict[str, Any]:
    """study.json and study.md with `part` in place of what the file held: a sweep's part
    replaces its own section, a seeds' study everything but the sweeps; each keeps the rest."""
    path = root / STUDY_JSON
    previous = json.loads(path.read_text()) if path.exists() else {}
    if any(k in SECTIONS for k in part):
        study = {**previous, **part}
    else:
        study = {**part, **{k: v for k, v in previous.items() if k in SECTIONS}}
    write_json_atomic(path, study)
    write_text_atomic(root / STUDY_MD, table(study))
    return study
