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
Writes run_dir/study.json (every number) and study.md, which the README's table is copied from.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from exectune_jax.config import Config
from exectune_jax.errors import UserError
from exectune_jax.evaluate import REFERENCE, mcnemar_exact

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
            row["mcnemar_p_per_seed"] = [mcnemar_exact(*p) for p in pairs]
            row["pooled"] = {"exectune_right_other_wrong": b, "exectune_wrong_other_right": c,
                             "mcnemar_p": mcnemar_exact(b, c)}
        rows.append(row)
    return {"seeds": seeds, "world": results[seeds[0]]["world"], "split": results[seeds[0]]["split"],
            "problems": results[seeds[0]]["problems"], "reference": REFERENCE, "rows": rows}


def _pm(cell: Mapping[str, float] | None, scale: float, digits: int) -> str:
    if cell is None:
        return "–"
    return f"{cell['mean'] * scale:.{digits}f} ± {cell['sd'] * scale:.{digits}f}"


def table(study: Mapping[str, Any]) -> str:
    """study.md: one markdown table, mean ± sd over seeds, per-seed and pooled tests."""
    seeds = ", ".join(str(s) for s in study["seeds"])
    head = (f"Seeds {seeds} ({len(study['seeds'])} runs of `exectune demo`), world version "
            f"{study['world']['version']} (`{study['world']['hash']}`), {study['problems']} "
            f"{study['split']} problems per seed. Mean ± sd over seeds; McNemar p against "
            f"{study['reference']} per seed and pooled over seeds (discordant pairs summed).\n\n"
            "| method | accuracy % | executability α % | USD / problem | McNemar p per seed | "
            "pooled discordant (exectune right / other right) | pooled p |\n"
            "|---|---|---|---|---|---|---|\n")
    body = ""
    for r in study["rows"]:
        pooled = r.get("pooled")
        per_seed = ", ".join(f"{p:.3g}" for p in r.get("mcnemar_p_per_seed", [])) or "–"
        body += (f"| {r['method']} | {_pm(r['accuracy'], 100, 1)} | {_pm(r['executability'], 100, 1)} "
                 f"| {_pm(r['usd_per_problem'], 1, 6)} | {per_seed} | "
                 + (f"{pooled['exectune_right_other_wrong']} / {pooled['exectune_wrong_other_right']} "
                    f"| {pooled['mcnemar_p']:.3g} |" if pooled else "– | – |") + "\n")
    return head + body


def run(cfg: Config, seeds: str = "0,1,2", quick: bool = False, **_: Any) -> int:
    """`exectune study`: one demo per seed (finished seeds are read back), then study.json/md."""
    from exectune_jax import demo
    from exectune_jax.train.acceptance import write_json_atomic

    chosen = parse_seeds(seeds)
    root = Path(cfg.run_dir)
    results = {}
    for seed in chosen:
        out = seed_dir(root, seed)
        done = out / "results.json"
        if not done.exists():
            print(f"exectune study: seed {seed} ({chosen.index(seed) + 1}/{len(chosen)}) in {out}")
            code = demo.run(demo.with_values(cfg, {"seed": seed, "sim.seed": seed}), out=str(out),
                            quick=quick)
            if code:
                print(f"exectune study: seed {seed} stopped; run the same command again to resume")
                return code
        results[seed] = json.loads(done.read_text())
    study = aggregate(results)
    write_json_atomic(root / STUDY_JSON, study)
    (root / STUDY_MD).write_text(table(study))
    print(table(study) + f"\nwritten to {root / STUDY_JSON} and {root / STUDY_MD}")
    return 0
