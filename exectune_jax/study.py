"""`exectune study`: the demo pipeline over several seeds, and what holds across them.

Each seed N is one whole `exectune demo` in run_dir/seed-N with `seed=N` and `sim.seed=N`: the
guides' initialisation, data order and sampling differ, and so do the teacher's samples (a
sampled request draws other text under another sim seed, as a real provider's sampling does
from run to run); the world, its greedy core and the test problems stay the same. A seed whose
demo finished is read back, an interrupted one resumes, as the demo does.

Then, per row: accuracy, executability α and USD per problem as mean ± sd over the seeds; per
seed, the paired McNemar p against exectune; and one pooled paired test over all seeds, the
exact McNemar test on the discordant pairs summed over seeds (each seed's problems are pairs of
the same two methods on the same problems, so the seeds are strata of one matched design).

Ablations (`--ablations`, the default), trained in each seed's run dir after its demo and scored
by one more eval stage (run_dir/seed-N/ablations/) beside every guide of the demo (whose core
calls replay from the call cache):
- `outcome_rl_from_sft`: GRPO from the `exectune_sft` guide with the outcome term alone (format,
  improve, harm, leak and cost weighted 0; the strategy prompt and its format gate kept): against
  `exectune`, what the structure-aware reward terms add from the same starting point;
- `exectune_rl_from_base`: ExecTune's RL from the base guide, no SFT: what the
  acceptance-filtered SFT stage adds;
- `sft_answer_only`: SFT on strategies accepted on the answer alone, the paper's acceptance
  (`sample.require_followed=false`, no `sample.max_cost_vs_core`), where the demo's acceptance
  also requires that the follow check says the core carried the strategy out and that its
  execution cost at most the core alone: against `exectune_sft`, what checking executability
  and cost, not only the answer, gives the SFT stage.
They are aggregated like the main rows, with their own McNemar tests against `exectune`. A seed
whose ablation eval lacks one of them (a study from an earlier version) trains the missing ones;
finished stages resume as finished.

Ablation (d), `--sensitivity`: how the rows move with the simulated world. One value of the world
is varied at a time around the run's own (SWEEP: the teacher's habit rate and the core's chance of
carrying out a two-operation step; values and their rationale in docs/world.md), each other value
one whole demo in run_dir/sensitivity/<value>/seed-N with `sim.world` naming it, for one seed
(`--seeds` for more); the run's own world at each seed is that seed's demo above. A finished world
is read back, and one whose results.json names another world is refused. Each world's rows are
aggregated like the main ones.

Writes run_dir/study.json (every number), study.md, which the README's table is copied from, and
study_accuracy_vs_alpha.png (every seed of every row, and the mean ± sd); a sweep adds its section
to both (a run of either kind keeps the other's as it was) and study_sensitivity.png.

`--rl-validation`: the validation run of docs/rl.md, which decides whether the candidate RL
setting (dr_grpo, std floor 0.1, cost resolution USD 0.0001) replaces the default and whether
RL from `exectune_sft` beats `exectune_sft`: per seed, in run_dir/rl-validation/seed-N at the
demo's sizes, the demo's stages up to its SFT guide, RL from it with each setting, and one eval
of the three guides on the whole validation split; writes run_dir/rl_validation.json and .md.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from exectune_jax import demo
from exectune_jax.demo import recipe, runner
from exectune_jax.config import Config
from exectune_jax.layout import BASE_GUIDE_DIR, GUIDE_DIR
from exectune_jax.errors import UserError
from exectune_jax.evaluate import REFERENCE, mcnemar_exact
from exectune_jax.world import HABIT_RATE, value_of, world_from

OUTCOME_ONLY = {"format": 0.0, "improve": 0.0, "harm": 0.0, "leak": 0.0, "cost": 0.0}
ABLATIONS = "ablations"  # the ablation eval's directory under each seed's run dir
ABLATION_PHASES = ((("rl_outcome",), ("rl_from_base",), ("sample_answer_only", "sft_answer_only")),
                   (("eval_ablations",),))
ABLATION_COMMANDS = {"rl_outcome": ("rl",), "rl_from_base": ("rl",), "sample_answer_only": ("sample",),
                     "sft_answer_only": ("sft",), "eval_ablations": ("eval",)}
ABLATION_GUIDES = {"outcome_rl_from_sft": f"rl_outcome/{GUIDE_DIR}",  # method -> guide, as eval.guides
                   "exectune_rl_from_base": f"rl_from_base/{GUIDE_DIR}",
                   "sft_answer_only": f"sft_answer_only/{GUIDE_DIR}"}
# acceptance of ablation (c): a right answer is enough (no follow check, no cost bound)
ANSWER_ONLY = {"sample.out": "sample_answer_only", "sample.require_followed": False,
               "sample.max_cost_vs_core": None}
STUDY_PLOT = "study_accuracy_vs_alpha.png"
# Ablation (d): each swept world value -> the values it takes, the run's own among them
SWEEP: dict[str, tuple[float, ...]] = {
    HABIT_RATE: (0.0, 0.4, 0.8),  # no habit, half the default's, the default's
    "follow_compound": (0.25, 0.55, 0.85),  # as hard as a vague step, the default, as easy as prose
}
SWEEP_AXES = {HABIT_RATE: "teacher habit rate (compound share at habit sites)",
              "follow_compound": "follow_compound (P core carries out a 2-operation step)"}
SENSITIVITY = "sensitivity"  # the sweep's worlds under run_dir, and its section of study.json
SENSITIVITY_PLOT = "study_sensitivity.png"
MEASURES = ("accuracy", "executability", "usd_per_problem")
STUDY_JSON, STUDY_MD = "study.json", "study.md"


def parse_seeds(text: str, least: int = 2) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if len(seeds) < least or len(set(seeds)) != len(seeds) or min(seeds, default=-1) < 0:
        many = "two or more distinct seeds" if least == 2 else "distinct seeds"
        raise UserError(f"--seeds {text!r}: give {many} >= 0, e.g. --seeds 0,1,2")
    return seeds


def seed_dir(root: Path, seed: int) -> Path:
    return root / f"seed-{seed}"


def seed_config(cfg: Config, seed: int) -> Config:
    """A seed's demo: its guides' seed and the sim's (the teacher's samples) both `seed`."""
    return recipe.with_values(cfg, {"seed": seed, "sim.seed": seed})


def demo_results(cfg: Config, out: Path, quick: bool, what: str) -> dict | None:
    """`out`'s results.json, after running the demo there unless it finished (None: it stopped)."""
    done = out / "results.json"
    if not done.exists():
        print(f"exectune study: {what} in {out}")
        if demo.run(cfg, out=str(out), quick=quick):
            print(f"exectune study: {what} stopped; run the same command again to resume")
            return None
    return json.loads(done.read_text())


def variants(overrides: Mapping[str, Any]) -> list[tuple[str, float, dict[str, Any]]]:
    """(value name, value, sim.world overrides) of each world the sweep adds to the run's own:
    every value of SWEEP other than the one the run's world has."""
    base = world_from(overrides)
    return [(name, value, {**overrides, name: value})
            for name, values in SWEEP.items() for value in values if value != value_of(base, name)]


def variant_dir(root: Path, name: str, value: float) -> Path:
    return root / SENSITIVITY / f"{name}-{value:g}"


def world_rows(overrides: Mapping[str, Any], results: Mapping[int, Mapping[str, Any]],
               dirs: Mapping[int, Path]) -> dict[str, Any]:
    """One world of the sweep: its swept values, what its runs recorded of it, and its rows
    aggregated over seeds; a run recorded in another world is refused."""
    world = world_from(overrides)
    for seed, doc in results.items():
        if doc["world"]["hash"] != world.hash:
            raise UserError(f"{dirs[seed]} ran in world {doc['world']['hash']}, not the sweep's "
                            f"{world.hash} ({dict(overrides)}); delete it or use another run_dir")
    agg = aggregate(results)
    return {"values": {name: value_of(world, name) for name in SWEEP}, "world": agg["world"],
            "rows": agg["rows"]}


def run_sweep(cfg: Config, seeds: Sequence[int], quick: bool) -> dict[str, Any] | None:
    """Ablation (d): the run's own world (each seed's demo) and every variant of it, each world's
    rows aggregated over `seeds`; None when a demo stopped."""
    root = Path(cfg.run_dir)
    try:
        added = variants(cfg.sim.world)
    except ValueError as e:
        raise UserError(f"the sensitivity sweep sets {', '.join(SWEEP)} on top of sim.world: {e}") from None
    runs = [(dict(cfg.sim.world), root, "")]
    runs += [(overrides, variant_dir(root, name, value), f"world {name}={value:g}, ")
             for name, value, overrides in added]
    worlds = []
    for overrides, where, what in runs:
        dirs = {s: seed_dir(where, s) for s in seeds}
        results = {}
        for s in seeds:
            cfg_s = recipe.with_values(seed_config(cfg, s), {"sim.world": overrides})
            got = demo_results(cfg_s, dirs[s], quick, f"{what}seed {s}")
            if got is None:
                return None
            results[s] = got
        worlds.append(world_rows(overrides, results, dirs))
    return {"seeds": list(seeds), "swept": {name: list(values) for name, values in SWEEP.items()},
            "worlds": worlds}


def ablation_configs(cfg: Config) -> dict[str, Config]:
    """The ablation stages' configs, inside one seed's run dir (its demo's guides as starts)."""
    run_dir = Path(cfg.run_dir)
    return {
        "rl_outcome": recipe.with_values(cfg, {"rl.name": "rl_outcome", "rl.preset": "exectune",
                                             "rl.weights": OUTCOME_ONLY,
                                             "rl.init": str(run_dir / "sft" / GUIDE_DIR)}),
        "rl_from_base": recipe.with_values(cfg, {"rl.name": "rl_from_base", "rl.preset": "exectune",
                                               "rl.init": str(run_dir / BASE_GUIDE_DIR)}),
        "sample_answer_only": recipe.with_values(cfg, ANSWER_ONLY),
        # SFT reads the accepted strategies of its config's sample stage (layout.sft_data)
        "sft_answer_only": recipe.with_values(cfg, {**ANSWER_ONLY, "sft.name": "sft_answer_only"}),
        "eval_ablations": recipe.with_values(cfg, {
            "eval.out": ABLATIONS, "eval.guides": {**cfg.eval.guides, **ABLATION_GUIDES},
            "eval.core_strong": False}),
    }


def mean_sd(values: Sequence[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}


def aggregate(results: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """study.json's content from each seed's results.json (pure)."""
    seeds = sorted(results)
    # a world is its version and hash (results.json of an earlier version recorded no overrides)
    worlds = {(results[s]["world"].get("version"), results[s]["world"].get("hash")) for s in seeds}
    if len(worlds) != 1:
        raise UserError(f"the seeds ran in different worlds ({sorted(worlds)}); rerun them with one "
                        "version of exectune")
    by_method: dict[str, dict[int, Mapping[str, Any]]] = {}
    for s in seeds:
        for row in results[s]["rows"]:
            by_method.setdefault(row["method"], {})[s] = row
    rows = []
    for method, per_seed in by_method.items():
        if sorted(per_seed) != seeds:
            raise UserError(f"row {method} is missing for seeds "
                            f"{sorted(set(seeds) - set(per_seed))}; rerun those seeds")
        row: dict[str, Any] = {"method": method, "n": [per_seed[s]["n"] for s in seeds]}
        for key in MEASURES:
            values = [per_seed[s][key] for s in seeds]
            row[key] = None if any(v is None for v in values) else {**mean_sd(values), "per_seed": values}
        if method != REFERENCE:
            pairs = [per_seed[s]["discordant_vs_exectune"] for s in seeds]
            b, c = sum(p[0] for p in pairs), sum(p[1] for p in pairs)
            row["discordant_per_seed"] = pairs
            row["mcnemar_p_per_seed"] = [mcnemar_exact(*p) for p in pairs]
            row["pooled"] = {"exectune_right_other_wrong": b, "exectune_wrong_other_right": c,
                             "mcnemar_p": mcnemar_exact(b, c)}
        rows.append(row)
    return {"seeds": seeds, "world": results[seeds[0]]["world"], "split": results[seeds[0]]["split"],
            "problems": results[seeds[0]]["problems"], "reference": REFERENCE, "rows": rows}


def all_rows(study: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The main rows, then the ablation rows the main table does not have."""
    main = {r["method"] for r in study["rows"]}
    extra = [r for r in study.get("ablations", {}).get("rows", []) if r["method"] not in main]
    return list(study["rows"]) + extra


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
    tests; then the sensitivity sweep's, when the study has one."""
    text = main_table(study) if "rows" in study else ""
    if SENSITIVITY in study:
        text += sweep_table(study[SENSITIVITY])
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


SWEEP_TABLES = (("accuracy", "Accuracy %", 100, 1), ("executability", "Executability α %", 100, 1),
                ("usd_per_problem", "USD per problem", 1, 6))


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


def sweep_points(sweep: Mapping[str, Any]) -> dict[str, list[tuple[float, list]]]:
    """Per swept value, its axis label -> (value, rows) of each world that differs from the
    run's own (the first) in that value alone, the run's own included."""
    own = sweep["worlds"][0]["values"]
    return {SWEEP_AXES.get(name, name): [
        (w["values"][name], w["rows"]) for w in sweep["worlds"]
        if all(w["values"][k] == own[k] for k in sweep["swept"] if k != name)]
        for name in sweep["swept"]}


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


def ablations_complete(results_json: Path) -> bool:
    """Whether a seed's ablation eval holds a row for every ablation of this version."""
    if not results_json.exists():
        return False
    methods = {r["method"] for r in json.loads(results_json.read_text())["rows"]}
    return set(ABLATION_GUIDES) <= methods


def run_ablations(cfg: Config, out: Path, quick: bool) -> bool:
    """One seed's ablation stages, against the sim server as its demo ran them."""
    cfg = recipe.prepare(cfg, str(out), quick)
    return runner.run_phases(cfg, ABLATION_PHASES, ablation_configs, ABLATION_COMMANDS) is not None


# ---------------------------------------------------------------------------------------------
# `--rl-validation`: the validation run of docs/rl.md ("The default, the candidate, and the
# rule that decides"), issue 26 item 5. Per seed, in run_dir/rl-validation/seed-N at the demo's
# sizes: base guide and acceptance sampling, SFT, then ExecTune RL from the SFT guide twice
# (the current defaults, and the candidate, all else equal), all three guides scored on the
# whole validation split. The test split is read by no stage of it.

RL_VALIDATION = "rl-validation"  # the seeds' directories under run_dir
RL_VALIDATION_OUT = "rl_validation"  # each seed's eval directory; the run's files under run_dir
RL_CANDIDATE = {"rl.advantage": "dr_grpo", "rl.std_floor": 0.1, "rl.cost_resolution_usd": 0.0001}
RL_VALIDATION_PHASES = ((("base_guide",), ("sample",)), (("sft",),), (("rl",), ("rl_candidate",)),
                        (("eval_validation",),))
RL_VALIDATION_COMMANDS = {"base_guide": ("base-guide",), "sample": ("sample",), "sft": ("sft",),
                          "rl": ("rl",), "rl_candidate": ("rl",), "eval_validation": ("eval",)}
RL_VALIDATION_GUIDES = {"exectune_sft": f"sft/{GUIDE_DIR}", "rl_default": f"rl/{GUIDE_DIR}",
                        "rl_candidate": f"rl_candidate/{GUIDE_DIR}"}
ALPHA_DROP_POINTS = 2.0  # the rule: α not lower by more than this, in points, in any seed
RL_RUN_KEYS = ("groups_with_spread", "entropy", "reward", "accuracy", "executability", "kl",
               "grad_norm")


def rl_validation_configs(cfg: Config) -> dict[str, Config]:
    """The validation run's stage configs inside one seed's directory: the demo's stages up to
    its ExecTune RL, the candidate beside it, and one eval on the validation split."""
    stages = recipe.stage_configs(cfg)
    return {
        **{k: stages[k] for k in ("base_guide", "sample", "sft", "rl")},
        "rl_candidate": recipe.with_values(stages["rl"], {"rl.name": "rl_candidate", **RL_CANDIDATE}),
        "eval_validation": recipe.with_values(cfg, {
            "eval.split": "validation", "eval.n_problems": None, "eval.core_strong": False,
            "eval.out": RL_VALIDATION_OUT, "eval.guides": {
                # a stage's config file merges eval.guides into the default's: blank the others
                **{m: "" for m in cfg.eval.guides if m not in RL_VALIDATION_GUIDES},
                **RL_VALIDATION_GUIDES},
            "eval.advisor_methods": []}),
    }


def _higher_in(seeds: Sequence[int]) -> int:
    """Seeds the new setting must win: 2 of the rule's 3 (two thirds, rounded up, of others)."""
    return -(-2 * len(seeds) // 3)


def rule(cells: Mapping[str, Mapping[str, Mapping[str, Any]]], new: str, old: str) -> dict[str, Any]:
    """docs/rl.md's rule, `new` against `old`: higher validation accuracy in at least 2 of the 3
    seeds, and α not lower by more than ALPHA_DROP_POINTS in any seed (pure)."""
    seeds = sorted(cells, key=int)
    per_seed = []
    for s in seeds:
        a, b = cells[s][new], cells[s][old]
        drop = (None if a["executability"] is None or b["executability"] is None
                else round(100 * (b["executability"] - a["executability"]), 9))
        per_seed.append({"seed": int(s), "accuracy_diff_points": round(100 * (a["accuracy"] - b["accuracy"]), 9),
                         "higher": a["accuracy"] > b["accuracy"], "alpha_drop_points": drop,
                         "alpha_ok": drop is not None and drop <= ALPHA_DROP_POINTS})
    wins, need = sum(p["higher"] for p in per_seed), _higher_in(seeds)
    alpha_ok = all(p["alpha_ok"] for p in per_seed)
    return {"new": new, "old": old, "per_seed": per_seed, "higher_in": wins, "needed": need,
            "accuracy_ok": wins >= need, "alpha_ok": alpha_ok, "passes": wins >= need and alpha_ok}


def validation_verdict(results: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """rl_validation.json from each seed's validation results.json (pure): per seed, accuracy
    and α with their intervals for the three guides, and the rule's verdicts."""
    seeds = sorted(results)
    cells: dict[str, dict[str, dict[str, Any]]] = {}  # seed (as JSON keys it) -> method -> cell
    for s in seeds:
        doc = results[s]
        if doc["split"] != "validation":
            raise UserError(f"seed {s}'s results are on the {doc['split']} split; the validation "
                            "run reads the validation split only")
        rows = {r["method"]: r for r in doc["rows"]}
        missing = [m for m in RL_VALIDATION_GUIDES if m not in rows]
        if missing:
            raise UserError(f"seed {s}'s validation results lack {', '.join(missing)}; rerun it")
        cells[str(s)] = {m: {k: rows[m][k] for k in ("n", "accuracy", "accuracy_ci", "executability",
                                                 "executability_ci")} for m in RL_VALIDATION_GUIDES}
    candidate = rule(cells, "rl_candidate", "rl_default")
    vs_sft = {m: rule(cells, m, "exectune_sft") for m in ("rl_default", "rl_candidate")}
    kept = "rl_candidate" if candidate["passes"] else "rl_default"
    return {
        "seeds": seeds, "as_written": seeds == [0, 1, 2],
        "split": "validation", "problems": {str(s): results[s]["problems"] for s in seeds},
        "world": results[seeds[0]]["world"], "cells": cells,
        "candidate_vs_default": candidate, "rl_vs_sft": vs_sft,
        "verdict": {"candidate_replaces_default": candidate["passes"], "kept": kept,
                    "rl_beats_sft": [m for m, r in vs_sft.items() if r["passes"]],
                    "kept_beats_sft": vs_sft[kept]["passes"]},
    }


def rl_run_summary(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What one RL run's metrics.jsonl says of its headroom: per key, mean over steps, first
    and last step (pure)."""
    out: dict[str, Any] = {"steps": len(records)}
    for key in RL_RUN_KEYS:
        values = [r[key] for r in records if isinstance(r.get(key), (int, float))]
        out[key] = (None if not values else
                    {"mean": statistics.fmean(values), "first": values[0], "last": values[-1]})
    return out


def _pct(value: float | None, interval: Sequence[float] | None) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f} [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"


def _verdict_lines(r: Mapping[str, Any], what: str) -> str:
    seeds = "; ".join(f"seed {p['seed']}: {p['accuracy_diff_points']:+.1f} acc, α "
                      + ("–" if p["alpha_drop_points"] is None else f"{0.0 - p['alpha_drop_points']:+.1f}")
                      for p in r["per_seed"])
    return (f"- {what}: {'**yes**' if r['passes'] else '**no**'} — accuracy higher in "
            f"{r['higher_in']} of {len(r['per_seed'])} seeds (needed {r['needed']}: "
            f"{'met' if r['accuracy_ok'] else 'not met'}); α lower by at most "
            f"{ALPHA_DROP_POINTS:g} points in every seed: {'met' if r['alpha_ok'] else 'not met'} "
            f"({seeds}; points)\n")


def rl_validation_table(doc: Mapping[str, Any]) -> str:
    """rl_validation.md: the per-seed table, each part of the rule, and the RL runs' metrics."""
    seeds = doc["seeds"]
    text = (f"Validation split ({', '.join(str(doc['problems'][str(s)]) for s in seeds)} problems per "
            f"seed), seeds {', '.join(map(str, seeds))}, world `{doc['world']['hash']}`; 95% Wilson "
            "intervals.\n\n| seed | method | n | accuracy % [95% CI] | executability α % [95% CI] |\n"
            "|---|---|---|---|---|\n")
    for s in seeds:
        for m, c in doc["cells"][str(s)].items():
            text += (f"| {s} | {m} | {c['n']} | {_pct(c['accuracy'], c['accuracy_ci'])} "
                     f"| {_pct(c['executability'], c['executability_ci'])} |\n")
    v = doc["verdict"]
    text += ("\nThe rule of docs/rl.md" + ("" if doc["as_written"] else
                                         " (not its seeds 0, 1, 2: not the rule as written)") + ":\n\n")
    text += _verdict_lines(doc["candidate_vs_default"], "the candidate (dr_grpo, floor 0.1, USD "
                           "0.0001) replaces the default")
    for m, r in doc["rl_vs_sft"].items():
        text += _verdict_lines(r, f"{m} beats exectune_sft")
    text += (f"\nVerdict: the {'candidate replaces the default' if v['candidate_replaces_default'] else 'default stays'}; "
             + (f"RL beats exectune_sft ({', '.join(v['rl_beats_sft'])})" if v["rl_beats_sft"]
                else "RL (either setting) does not beat exectune_sft")
             + f"; the setting kept ({v['kept']}) {'beats' if v['kept_beats_sft'] else 'does not beat'} "
             "exectune_sft.\n")
    if doc.get("rl_runs"):
        text += ("\nRL runs (metrics.jsonl; mean over steps, first → last step):\n\n| seed | run | steps | "
                 + " | ".join(RL_RUN_KEYS) + " |\n|---|---|---|" + "---|" * len(RL_RUN_KEYS) + "\n")
        for s, runs in doc["rl_runs"].items():
            for name, summary in runs.items():
                cells = [("–" if summary[k] is None else
                          f"{summary[k]['mean']:.3g} ({summary[k]['first']:.3g} → {summary[k]['last']:.3g})")
                         for k in RL_RUN_KEYS]
                text += f"| {s} | {name} | {summary['steps']} | " + " | ".join(cells) + " |\n"
    if doc.get("seconds"):
        text += ("\nWall time per seed (this invocation's stages; a seed read back has none): "
                 + ", ".join(f"seed {s} {sec / 60:.1f} min" for s, sec in doc["seconds"].items()) + "\n")
    return text


def run_rl_validation(cfg: Config, seeds: Sequence[int], quick: bool) -> int:
    """Each seed's stages (a seed whose validation eval finished is read back; an interrupted
    one resumes from its finished stages), then run_dir/rl_validation.json and .md."""
    from exectune_jax.io import write_json_atomic, write_text_atomic
    from exectune_jax.train.metrics import read_metrics

    root = Path(cfg.run_dir)
    results, runs, seconds = {}, {}, {}
    for i, seed in enumerate(seeds):
        out = root / RL_VALIDATION / f"seed-{seed}"
        done = out / RL_VALIDATION_OUT / "results.json"
        timing = out / "rl_validation_seconds.json"
        if not done.exists():
            print(f"exectune study: rl validation, seed {seed} ({i + 1}/{len(seeds)}) in {out}")
            seed_cfg = recipe.prepare(seed_config(cfg, seed), str(out), quick)
            out.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            if runner.run_phases(seed_cfg, RL_VALIDATION_PHASES, rl_validation_configs,
                               RL_VALIDATION_COMMANDS) is None:
                print(f"exectune study: seed {seed}'s rl validation stopped; run the same command "
                      "again to resume")
                return 1
            timing.write_text(json.dumps({"seconds": time.perf_counter() - start}) + "\n")
        if timing.exists():
            seconds[str(seed)] = json.loads(timing.read_text())["seconds"]
        results[seed] = json.loads(done.read_text())
        runs[str(seed)] = {name: rl_run_summary(read_metrics(out / name)) for name in ("rl", "rl_candidate")}
    doc = {**validation_verdict(results), "rl_runs": runs, "seconds": seconds, "quick": quick}
    write_json_atomic(root / f"{RL_VALIDATION_OUT}.json", doc)
    md = rl_validation_table(doc)
    write_text_atomic(root / f"{RL_VALIDATION_OUT}.md", md)
    print(md + f"\nwritten to {root / RL_VALIDATION_OUT}.json and .md")
    return 0


def save(root: Path, part: Mapping[str, Any]) -> dict[str, Any]:
    """study.json and study.md with `part` in place of what the file held: a sweep's part
    replaces the sweep's section, a seeds' study everything else; each keeps the other's."""
    from exectune_jax.io import write_json_atomic, write_text_atomic

    path = root / STUDY_JSON
    previous = json.loads(path.read_text()) if path.exists() else {}
    swept = SENSITIVITY in part
    kept = {k: v for k, v in previous.items() if (k == SENSITIVITY) != swept}
    study = {**kept, **part} if swept else {**part, **kept}
    write_json_atomic(path, study)
    write_text_atomic(root / STUDY_MD, table(study))
    return study


def run(cfg: Config, seeds: str | None = None, quick: bool = False, ablations: bool = True,
        sensitivity: bool = False, rl_validation: bool = False, **_: Any) -> int:
    """`exectune study`: one demo per seed (finished seeds are read back), then study.json/md;
    with `sensitivity`, the sweep of ablation (d) instead (seed 0 unless `seeds` says)."""
    from exectune_jax import plots

    root = Path(cfg.run_dir)
    if rl_validation:
        return run_rl_validation(cfg, parse_seeds(seeds or "0,1,2", least=1), quick)
    if sensitivity:
        sweep = run_sweep(cfg, parse_seeds(seeds or "0", least=1), quick)
        if sweep is None:
            return 1
        save(root, {SENSITIVITY: sweep})
        n = len(sweep["seeds"])
        plots.sensitivity(sweep_points(sweep), root / SENSITIVITY_PLOT,
                          f"Rows against the world's values ({'mean ± sd over ' if n > 1 else ''}"
                          f"{n} seed{'s' if n > 1 else ''}; dotted: the run's own world)")
        print(sweep_table(sweep) + f"\nwritten to {root / STUDY_JSON}, {root / STUDY_MD} and "
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
