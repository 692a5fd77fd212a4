"""`--rl-validation --candidate KEY=VALUE ...`: the validation run of docs/rl.md ("The default,
the candidate, and the rule that decides"), which decides whether a candidate RL setting (the
rl.* overrides given, `study/rl_candidate.py`) replaces the default and whether RL from
`exectune_sft` beats `exectune_sft`.

Per seed, in run_dir/rl-validation/seed-N at the demo's sizes: base guide and acceptance
sampling, SFT, then ExecTune RL from the SFT guide twice (the config as given, and with the
candidate's overrides, all else equal), all three guides scored on the whole validation split;
writes run_dir/rl_validation.json and .md. The test split is read by no stage of it.
"""

from __future__ import annotations

import functools
import json
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from exectune_jax.config import Config
from exectune_jax.demo.recipe import prepare, stage_configs, with_values
from exectune_jax.demo.runner import run_phases
from exectune_jax.errors import UserError
from exectune_jax.io import write_json_atomic, write_text_atomic
from exectune_jax.layout import GUIDE_DIR
from exectune_jax.study.rl_candidate import (
    ARM,
    candidate_arm,
    check_pool,
    check_ran_with,
    overrides,
)
from exectune_jax.study.seeds import seed_config
from exectune_jax.train.metrics import read_metrics

RL_VALIDATION = "rl-validation"  # the seeds' directories under run_dir
RL_VALIDATION_OUT = "rl_validation"  # each seed's eval directory; the run's files under run_dir
RL_VALIDATION_PHASES = ((("base_guide",), ("sample",)), (("sft",),), (("rl",), ("rl_candidate",)),
                        (("eval_validation",),))
RL_VALIDATION_COMMANDS = {"base_guide": ("base-guide",), "sample": ("sample",), "sft": ("sft",),
                          "rl": ("rl",), "rl_candidate": ("rl",), "eval_validation": ("eval",)}
RL_VALIDATION_GUIDES = {"exectune_sft": f"sft/{GUIDE_DIR}", "rl_default": f"rl/{GUIDE_DIR}",
                        "rl_candidate": f"{ARM}/{GUIDE_DIR}"}
ALPHA_DROP_POINTS = 2.0  # the rule: α not lower by more than this, in points, in any seed
# per-step metrics each arm's summary reports (a key no run logged gets no column): the
# informative share and dynamic sampling's counts first, then what the update did
RL_RUN_KEYS = ("groups_with_spread", "drawn_with_spread", "groups_extra", "groups_replaced",
               "groups_unfilled", "core_calls_paid", "core_calls_replayed", "entropy", "reward",
               "accuracy", "executability", "kl", "grad_norm")
RL_RUN_COUNTS = ("groups_extra", "groups_replaced", "groups_unfilled", "core_calls_paid",
                 "core_calls_replayed")  # counts per step: the run's total says what it paid


def rl_validation_configs(cfg: Config, candidate: Sequence[str]) -> dict[str, Config]:
    """The validation run's stage configs inside one seed's directory: the demo's stages up to
    its ExecTune RL, the `candidate` arm beside it, and one eval on the validation split."""
    stages = stage_configs(cfg)
    return {
        **{k: stages[k] for k in ("base_guide", "sample", "sft", "rl")},
        "rl_candidate": candidate_arm(stages["rl"], candidate),
        "eval_validation": with_values(cfg, {
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


def validation_verdict(results: Mapping[int, Mapping[str, Any]],
                       candidate: Sequence[str]) -> dict[str, Any]:
    """rl_validation.json from each seed's validation results.json and the `candidate`'s
    overrides (pure): per seed, accuracy and α with their intervals for the three guides, and
    the rule's verdicts."""
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
    vs_default = rule(cells, "rl_candidate", "rl_default")
    vs_sft = {m: rule(cells, m, "exectune_sft") for m in ("rl_default", "rl_candidate")}
    kept = "rl_candidate" if vs_default["passes"] else "rl_default"
    return {
        "seeds": seeds, "as_written": seeds == [0, 1, 2], "candidate": list(candidate),
        "split": "validation", "problems": {str(s): results[s]["problems"] for s in seeds},
        "world": results[seeds[0]]["world"], "cells": cells,
        "candidate_vs_default": vs_default, "rl_vs_sft": vs_sft,
        "verdict": {"candidate_replaces_default": vs_default["passes"], "kept": kept,
                    "rl_beats_sft": [m for m, r in vs_sft.items() if r["passes"]],
                    "kept_beats_sft": vs_sft[kept]["passes"]},
    }


def rl_run_summary(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What one RL run's metrics.jsonl says of its headroom: per key, mean over the steps that
    logged it, first and last step, and for a count the total; None where no step logged it
    (pure)."""
    out: dict[str, Any] = {"steps": len(records)}
    for key in RL_RUN_KEYS:
        values = [r[key] for r in records if isinstance(r.get(key), (int, float))]
        out[key] = (None if not values else
                    {"mean": statistics.fmean(values), "first": values[0], "last": values[-1],
                     **({"total": sum(values)} if key in RL_RUN_COUNTS else {})})
    return out


def _run_cell(summary: Mapping[str, Any] | None) -> str:
    if summary is None:
        return "–"
    text = f"{summary['mean']:.3g} ({summary['first']:.3g} → {summary['last']:.3g})"
    return f"{summary['total']:g}; {text}" if "total" in summary else text


def rl_runs_table(runs: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """The RL runs' summaries, one row per seed and arm, a column per key some run logged."""
    summaries = [summary for arms in runs.values() for summary in arms.values()]
    keys = [k for k in RL_RUN_KEYS if any(summary.get(k) is not None for summary in summaries)]
    text = ("\nRL runs (metrics.jsonl; mean over steps, first → last step in brackets; a count "
            "starts with the run's total):\n\n| seed | run | steps | " + " | ".join(keys)
            + " |\n|---|---|---|" + "---|" * len(keys) + "\n")
    for s, arms in runs.items():
        for name, summary in arms.items():
            text += (f"| {s} | {name} | {summary['steps']} | "
                     + " | ".join(_run_cell(summary.get(k)) for k in keys) + " |\n")
    return text


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
    text += _verdict_lines(doc["candidate_vs_default"], "the candidate (`"
                           + " ".join(doc["candidate"]) + "`) replaces the default")
    for m, r in doc["rl_vs_sft"].items():
        text += _verdict_lines(r, f"{m} beats exectune_sft")
    text += (f"\nVerdict: the {'candidate replaces the default' if v['candidate_replaces_default'] else 'default stays'}; "
             + (f"RL beats exectune_sft ({', '.join(v['rl_beats_sft'])})" if v["rl_beats_sft"]
                else "RL (either setting) does not beat exectune_sft")
             + f"; the setting kept ({v['kept']}) {'beats' if v['kept_beats_sft'] else 'does not beat'} "
             "exectune_sft.\n")
    if doc.get("rl_runs"):
        text += rl_runs_table(doc["rl_runs"])
    if doc.get("seconds"):
        text += ("\nWall time per seed (this invocation's stages; a seed read back has none): "
                 + ", ".join(f"seed {s} {sec / 60:.1f} min" for s, sec in doc["seconds"].items()) + "\n")
    return text


def run_rl_validation(cfg: Config, seeds: Sequence[int], quick: bool,
                      candidate: Sequence[str]) -> int:
    """Each seed's stages with `candidate` as the second RL arm (a seed whose validation eval
    finished is read back; an interrupted one resumes from its finished stages), then
    run_dir/rl_validation.json and .md. The candidate is checked for every seed before any
    stage runs: its keys, its values, its RL pool, and the arm a seed already ran."""
    root = Path(cfg.run_dir)
    candidate = overrides(candidate)
    outs = {seed: root / RL_VALIDATION / f"seed-{seed}" for seed in seeds}
    seed_cfgs = {seed: prepare(seed_config(cfg, seed), str(outs[seed]), quick) for seed in seeds}
    arms = {seed: rl_validation_configs(c, candidate)[ARM] for seed, c in seed_cfgs.items()}
    check_pool(arms[seeds[0]])
    for seed in seeds:
        check_ran_with(outs[seed], arms[seed])
    results, runs, seconds = {}, {}, {}
    for i, seed in enumerate(seeds):
        out = outs[seed]
        done = out / RL_VALIDATION_OUT / "results.json"
        timing = out / "rl_validation_seconds.json"
        if not done.exists():
            print(f"exectune study: rl validation, seed {seed} ({i + 1}/{len(seeds)}) in {out}")
            out.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            configs = functools.partial(rl_validation_configs, candidate=candidate)
            if run_phases(seed_cfgs[seed], RL_VALIDATION_PHASES, configs,
                          RL_VALIDATION_COMMANDS) is None:
                print(f"exectune study: seed {seed}'s rl validation stopped; run the same command "
                      "again to resume")
                return 1
            timing.write_text(json.dumps({"seconds": time.perf_counter() - start}) + "\n")
        if timing.exists():
            seconds[str(seed)] = json.loads(timing.read_text())["seconds"]
        results[seed] = json.loads(done.read_text())
        runs[str(seed)] = {name: rl_run_summary(read_metrics(out / name)) for name in ("rl", ARM)}
    doc = {**validation_verdict(results, candidate), "rl_runs": runs, "seconds": seconds,
           "quick": quick}
    write_json_atomic(root / f"{RL_VALIDATION_OUT}.json", doc)
    md = rl_validation_table(doc)
    write_text_atomic(root / f"{RL_VALIDATION_OUT}.md", md)
    print(md + f"\nwritten to {root / RL_VALIDATION_OUT}.json and .md")
    return 0
