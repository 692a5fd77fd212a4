"""Break-even: after how many problems served a guide's per-problem savings repay its training.

Training spend per guide is what the ledger paid for the stages that made it (acceptance
sampling's teacher and core calls, RL's core calls); a guide's per-problem cost is its row's core
USD per problem plus its own generated tokens at `eval.guide_usd_per_mtok` (self-hosted: 0 by
default). Against a baseline row (core_only, core_strong), break-even is
training / (baseline per-problem - guide per-problem), or None when the guide saves nothing.

Kept out of results.json on purpose: what the ledger paid depends on the mode (batch halves it),
on prompt-cache timing and on what a resumed run replayed, while results.json is the same file
for the same seed. It goes to break_even.json, break_even.md (beside results.md) and a plot.
Each other core of `eval.cores` gets its own entries against its own rows: a guide that repays
its training on one core may never repay it on another.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from exectune_jax import layout, plots
from exectune_jax.api.ledger import read_totals
from exectune_jax.io import write_json_atomic, write_text_atomic

# The ledger stages (top-level names) that trained each default guide. RL's core-alone rates,
# held-out checks and judge calls are shared by both RL guides and charged to each in full.
RL_SHARED = ("core_only", "rl_eval", "judge")
LINEAGE = {
    "base_guide": (),
    "sft_unfiltered": ("sample_unfiltered",),
    "exectune_sft": ("sample",),
    "advisor_rl": ("advisor_rl", *RL_SHARED),
    "exectune": ("sample", "rl", *RL_SHARED),
    "exectune_next": ("sample", "rl_next", *RL_SHARED),  # the demo's RL against the next core
}
BASELINES = ("core_only", "core_strong")


def lineage(method: str, guide_dir: str) -> tuple[str, ...]:
    """Stages behind a guide: the default map, else the stage directory it was written to."""
    if method in LINEAGE:
        return LINEAGE[method]
    return Path(guide_dir).parts[:1]


def training_spend(stages: Mapping[str, Mapping], lineages: Mapping[str, Sequence[str]]) -> dict[str, dict]:
    """method -> {stage: USD paid} from ledger totals (keys like sample.teacher group under sample)."""
    out: dict[str, dict] = {}
    for method, names in lineages.items():
        spent: dict[str, float] = {}
        for stage, t in stages.items():
            top = stage.split(".")[0]
            if top in names:
                spent[top] = spent.get(top, 0.0) + t["usd"]
        out[method] = spent
    return out


def per_problem(row: Mapping, guide_usd_per_mtok: float) -> float:
    guide = row["guide_tokens"] / row["n"] * guide_usd_per_mtok / 1e6 if row["n"] else 0.0
    return row["usd_per_problem"] + guide


def problems_to_repay(training_usd: float, guide_cost: float, baseline_cost: float) -> float | None:
    """Problems after which the savings repay training; None if the guide is not cheaper."""
    saving = baseline_cost - guide_cost
    if saving <= 0:
        return None
    return training_usd / saving


def break_even(rows: Sequence[Mapping], spend: Mapping[str, Mapping[str, float]],
               guide_usd_per_mtok: float = 0.0) -> list[dict]:
    """One entry per guided row with known training spend."""
    by = {r["method"]: r for r in rows}
    out = []
    for r in rows:
        if r["method"] not in spend:
            continue
        training = sum(spend[r["method"]].values())
        cost = per_problem(r, guide_usd_per_mtok)
        entry = {"method": r["method"], "training_usd": training, "training_usd_by_stage": spend[r["method"]],
                 "usd_per_problem": cost}
        for base in BASELINES:
            entry[f"problems_to_repay_vs_{base}"] = (
                problems_to_repay(training, cost, per_problem(by[base], 0.0)) if base in by else None)
        out.append(entry)
    return out


def table(entries: Sequence[Mapping]) -> str:
    def n(v):
        return "never" if v is None else f"{v:,.0f}"

    lines = ["| method | training USD | USD / problem | repaid vs core_only after | "
             "repaid vs core_strong after |", "|---|---:|---:|---:|---:|"]
    for e in entries:
        lines.append(f"| {e['method']} | {e['training_usd']:.4f} | {e['usd_per_problem']:.6f} | "
                     f"{n(e['problems_to_repay_vs_core_only'])} | {n(e['problems_to_repay_vs_core_strong'])} |")
    return "\n".join(lines) + "\n"


def per_core(doc: Mapping, spend: Mapping[str, Mapping[str, float]],
             guide_usd_per_mtok: float = 0.0) -> dict[str, dict]:
    """Break-even on each other core of eval.cores (results.json's `cores`): the same training
    spend, against that core's own rows (its core alone; the strong core's row is the first
    core's table's only)."""
    return {name: {"model": table_doc["model"],
                   "entries": break_even(table_doc["rows"], spend, guide_usd_per_mtok)}
            for name, table_doc in doc.get("cores", {}).items()}


def write(cfg: Any, out: Path, doc: Mapping) -> list[Path]:
    """break_even.json, break_even.md (a table per core of eval.cores) and cost_vs_problems.png
    (the first core's) in the eval directory."""
    ledger = layout.ledger(cfg.run_dir)
    if not ledger.exists():
        return []
    stages = read_totals(ledger)
    lineages = {m: lineage(m, d) for m, d in cfg.eval.guides.items()}
    spend = training_spend(stages, lineages)
    entries = break_even(doc["rows"], spend, cfg.eval.guide_usd_per_mtok)
    cores = per_core(doc, spend, cfg.eval.guide_usd_per_mtok)
    write_json_atomic(out / "break_even.json", {"guide_usd_per_mtok": cfg.eval.guide_usd_per_mtok,
                                                "entries": entries, "cores": cores})
    text = ("Training spend (ledger) and the problems after which each guide's savings repay it "
            f"(guide tokens at ${cfg.eval.guide_usd_per_mtok}/M):\n\n" + table(entries))
    for name, core in cores.items():
        text += (f"\nExecuted by {name} ({core['model']}): the same training spend, against that "
                 "core's own rows\n\n" + table(core["entries"]))
    write_text_atomic(out / "break_even.md", text)
    figure = plots.cost_vs_problems(doc["rows"], entries, out / "cost_vs_problems.png")
    return [out / "break_even.json", out / "break_even.md"] + ([figure] if figure else [])
