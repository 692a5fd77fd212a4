"""What holds across seeds (pure): per row, accuracy, executability α and USD per problem as
mean ± sd over the seeds; per seed, the paired McNemar p against exectune; and one pooled paired
test over all seeds, the exact McNemar test on the discordant pairs summed over seeds (each
seed's problems are pairs of the same two methods on the same problems, so the seeds are strata
of one matched design).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from exectune_jax.errors import UserError
from exectune_jax.evaluate import REFERENCE, mcnemar_exact

MEASURES = ("accuracy", "executability", "usd_per_problem")


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
