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

Writes run_dir/study.json (every number), study.md, which the README's table is copied from, and
study_accuracy_vs_alpha.png (every seed of every row, and the mean ± sd).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from exectune_jax import demo
from exectune_jax.config import BASE_GUIDE_DIR, GUIDE_DIR, Config
from exectune_jax.errors import UserError
from exectune_jax.evaluate import REFERENCE, mcnemar_exact

OUTCOME_ONLY = {"format": 0.0, "improve": 0.0, "harm": 0.0, "leak": 0.0, "cost": 0.0}
ABLATIONS = "ablations"  # the ablation eval's directory under each seed's run dir
ABLATION_PHASES = ((("rl_outcome",), ("rl_from_base",), ("sample_answer_only", "sft_answer_only")),
                   (("eval_ablations",),))
ABLATION_COMMANDS = {"rl_outcome": "rl", "rl_from_base": "rl", "sample_answer_only": "sample",
                     "sft_answer_only": "sft", "eval_ablations": "eval"}
ABLATION_GUIDES = {"outcome_rl_from_sft": f"rl_outcome/{GUIDE_DIR}",  # method -> guide, as eval.guides
                   "exectune_rl_from_base": f"rl_from_base/{GUIDE_DIR}",
                   "sft_answer_only": f"sft_answer_only/{GUIDE_DIR}"}
# acceptance of ablation (c): a right answer is enough (no follow check, no cost bound)
ANSWER_ONLY = {"sample.out": "sample_answer_only", "sample.require_followed": False,
               "sample.max_cost_vs_core": None}
STUDY_PLOT = "study_accuracy_vs_alpha.png"
MEASURES = ("accuracy", "executability", "usd_per_problem")
STUDY_JSON, STUDY_MD = "study.json", "study.md"


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if len(seeds) < 2 or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise UserError(f"--seeds {text!r}: give two or more distinct seeds >= 0, e.g. --seeds 0,1,2")
    return seeds


def seed_dir(root: Path, seed: int) -> Path:
    return root / f"seed-{seed}"


def ablation_configs(cfg: Config) -> dict[str, Config]:
    """The ablation stages' configs, inside one seed's run dir (its demo's guides as starts)."""
    run_dir = Path(cfg.run_dir)
    return {
        "rl_outcome": demo.with_values(cfg, {"rl.name": "rl_outcome", "rl.preset": "exectune",
                                             "rl.weights": OUTCOME_ONLY,
                                             "rl.init": str(run_dir / "sft" / GUIDE_DIR)}),
        "rl_from_base": demo.with_values(cfg, {"rl.name": "rl_from_base", "rl.preset": "exectune",
                                               "rl.init": str(run_dir / BASE_GUIDE_DIR)}),
        "sample_answer_only": demo.with_values(cfg, ANSWER_ONLY),
        # SFT reads the accepted strategies of its config's sample stage (sft.data_path)
        "sft_answer_only": demo.with_values(cfg, {**ANSWER_ONLY, "sft.name": "sft_answer_only"}),
        "eval_ablations": demo.with_values(cfg, {
            "eval.out": ABLATIONS, "eval.guides": {**cfg.eval.guides, **ABLATION_GUIDES},
            "eval.core_strong": False}),
    }


def mean_sd(values: Sequence[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}


def aggregate(results: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """study.json's content from each seed's results.json (pure)."""
    seeds = sorted(results)
    worlds = {json.dumps(results[s]["world"], sort_keys=True) for s in seeds}
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


def _pm(cell: Mapping[str, Any] | None, scale: float, digits: int, seeds: bool = False) -> str:
    """"mean ± sd", and with `seeds` each seed's value after it."""
    if cell is None:
        return "–"
    text = f"{cell['mean'] * scale:.{digits}f} ± {cell['sd'] * scale:.{digits}f}"
    if seeds:
        text += " (" + ", ".join(f"{v * scale:.{digits}f}" for v in cell["per_seed"]) + ")"
    return text


def table(study: Mapping[str, Any]) -> str:
    """study.md: the main table and the ablations', mean ± sd over seeds, per-seed and pooled tests."""
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


def ablations_complete(results_json: Path) -> bool:
    """Whether a seed's ablation eval holds a row for every ablation of this version."""
    if not results_json.exists():
        return False
    methods = {r["method"] for r in json.loads(results_json.read_text())["rows"]}
    return set(ABLATION_GUIDES) <= methods


def run_ablations(cfg: Config, out: Path, quick: bool) -> bool:
    """One seed's ablation stages, against the sim server as its demo ran them."""
    cfg = demo.prepare(cfg, str(out), quick)
    return demo.run_phases(cfg, ABLATION_PHASES, ablation_configs, ABLATION_COMMANDS) is not None


def run(cfg: Config, seeds: str = "0,1,2", quick: bool = False, ablations: bool = True,
        **_: Any) -> int:
    """`exectune study`: one demo per seed (finished seeds are read back), then study.json/md."""
    from exectune_jax import plots
    from exectune_jax.train.acceptance import write_json_atomic

    chosen = parse_seeds(seeds)
    root = Path(cfg.run_dir)
    results, ablated = {}, {}
    for seed in chosen:
        out = seed_dir(root, seed)
        seed_cfg = demo.with_values(cfg, {"seed": seed, "sim.seed": seed})
        done, ablations_done = out / "results.json", out / ABLATIONS / "results.json"
        step = f"seed {seed} ({chosen.index(seed) + 1}/{len(chosen)}) in {out}"
        if not done.exists():
            print(f"exectune study: {step}")
            if demo.run(seed_cfg, out=str(out), quick=quick):
                print(f"exectune study: seed {seed} stopped; run the same command again to resume")
                return 1
        if ablations and not ablations_complete(ablations_done):
            print(f"exectune study: ablations of {step}")
            if not run_ablations(seed_cfg, out, quick):
                print(f"exectune study: seed {seed}'s ablations stopped; run the same command "
                      "again to resume")
                return 1
        results[seed] = json.loads(done.read_text())
        if ablations:
            ablated[seed] = json.loads(ablations_done.read_text())
    study = aggregate(results)
    if ablations:
        study["ablations"] = aggregate(ablated)
    write_json_atomic(root / STUDY_JSON, study)
    (root / STUDY_MD).write_text(table(study))
    plots.seeds_accuracy_vs_alpha(all_rows(study), root / STUDY_PLOT)
    print(table(study) + f"\nwritten to {root / STUDY_JSON}, {root / STUDY_MD} and {root / STUDY_PLOT}")
    return 0
