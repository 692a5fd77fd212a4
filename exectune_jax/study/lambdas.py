"""`--lambdas L1,L2,...`: the cost weight λ of ExecTune's RL swept, and the accuracy-vs-USD
frontier it draws against the core alone, the strong core and the other rows.

λ enters the method only as RL's cost weight (`rl.weights.cost`, reward units per USD, docs/rl.md),
so per seed the sweep reuses that seed's demo (run first where it has not finished) and adds, like
the ablations, one RL stage per λ from the demo's `exectune_sft` guide in
run_dir/seed-N/rl_lambda-<λ>, then one eval stage in run_dir/seed-N/lambdas scoring those guides
beside the demo's (whose core calls replay from the call cache) on the first core of eval.cores,
the strong core alone included. The λ the demo trained with is its `exectune` guide, not trained
again. Each λ is the row `exectune_lambda_<λ>`; rows are aggregated over seeds like the main ones.

The paper's claim lives in one region of the plot: above the strong core's accuracy and below its
USD per problem ("cheaper and better"); `cheaper_and_better` names the λ rows inside it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from exectune_jax import layout
from exectune_jax.config import Config
from exectune_jax.demo.recipe import prepare, with_values
from exectune_jax.demo.runner import run_phases
from exectune_jax.errors import UserError
from exectune_jax.layout import GUIDE_DIR
from exectune_jax.study.across_seeds import aggregate
from exectune_jax.study.seeds import demo_results, seed_config, seed_dir
from exectune_jax.train.rewards import make_spec

LAMBDAS = "lambdas"  # the sweep's eval directory under each seed's run dir, and its study.json section
PARETO_PLOT = "study_pareto.png"
PREFIX = "exectune_lambda_"  # the method name of ExecTune RL trained at one λ
STRONG = "core_strong"


def parse_lambdas(text: str) -> list[float]:
    """`--lambdas 0,30,300`: distinct cost weights >= 0, at least two (one λ draws no frontier)."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if len(values) < 2 or len(set(values)) != len(values) or min(values) < 0:
        raise UserError(f"--lambdas {text!r}: give two or more distinct cost weights >= 0 (reward "
                        "units per USD, as rl.weights.cost), e.g. --lambdas 0,30,100,300,1000")
    return sorted(values)


def method(lam: float) -> str:
    return f"{PREFIX}{lam:g}"


def stage(lam: float) -> str:
    return f"rl_lambda-{lam:g}"


def own_lambda(cfg: Config) -> float:
    """The cost weight the demo's ExecTune RL trains with."""
    return make_spec("exectune", cfg.rl.weights).weights["cost"]


def trained(cfg: Config, lambdas: Sequence[float]) -> list[float]:
    """The λs that need an RL stage of their own: all but the demo's."""
    return [lam for lam in lambdas if lam != own_lambda(cfg)]


def lambda_configs(cfg: Config, lambdas: Sequence[float]) -> dict[str, Config]:
    """The sweep's stage configs inside one seed's run dir: RL per λ from the demo's SFT guide,
    then the eval of every λ's guide beside the demo's guides on the first core."""
    run_dir = Path(cfg.run_dir)
    configs = {stage(lam): with_values(cfg, {
        "rl.name": stage(lam), "rl.preset": "exectune", "rl.weights": {**cfg.rl.weights, "cost": lam},
        "rl.init": str(layout.guide(run_dir, "sft"))}) for lam in trained(cfg, lambdas)}
    guides = {method(lam): (f"{stage(lam)}/{GUIDE_DIR}" if lam in trained(cfg, lambdas)
                            else cfg.eval.guides["exectune"]) for lam in lambdas}
    configs["eval_lambdas"] = with_values(cfg, {
        "eval.out": LAMBDAS, "eval.guides": {**cfg.eval.guides, **guides},
        "eval.cores": cfg.eval.cores[:1], "eval.core_strong": True})
    return configs


def lambda_phases(cfg: Config, lambdas: Sequence[float]) -> tuple[tuple[tuple[str, ...], ...], ...]:
    """Two chains of RL stages side by side (a tiny model's step keeps about one core busy), then
    the eval."""
    stages = [stage(lam) for lam in trained(cfg, lambdas)]
    chains = tuple(tuple(stages[i::2]) for i in range(2) if stages[i::2])
    return (chains, (("eval_lambdas",),)) if chains else ((("eval_lambdas",),),)


def lambda_commands(cfg: Config, lambdas: Sequence[float]) -> dict[str, tuple[str, ...]]:
    return {**{stage(lam): ("rl",) for lam in trained(cfg, lambdas)}, "eval_lambdas": ("eval",)}


def complete(results_json: Path, lambdas: Sequence[float]) -> bool:
    """Whether a seed's sweep eval holds a row for every λ asked for."""
    if not results_json.exists():
        return False
    methods = {r["method"] for r in json.loads(results_json.read_text())["rows"]}
    return {method(lam) for lam in lambdas} <= methods


def run_lambda_sweep(cfg: Config, seeds: Sequence[int], quick: bool,
                     lambdas: Sequence[float]) -> dict[str, Any] | None:
    """Per seed, its demo (run unless finished), then its RL per λ and their eval (unless
    finished); the rows aggregated over `seeds`. None when a stage stopped."""
    root = Path(cfg.run_dir)
    results = {}
    for s in seeds:
        out = seed_dir(root, s)
        seed_cfg = seed_config(cfg, s)
        if demo_results(seed_cfg, out, quick, f"seed {s}") is None:
            return None
        done = out / LAMBDAS / "results.json"
        if not complete(done, lambdas):
            print(f"exectune study: seed {s}'s RL at cost weights {', '.join(f'{v:g}' for v in lambdas)} "
                  f"in {out}")
            staged = prepare(seed_cfg, str(out), quick)
            if run_phases(staged, lambda_phases(staged, lambdas), lambda staged_cfg: lambda_configs(
                    staged_cfg, lambdas), lambda_commands(staged, lambdas)) is None:
                print(f"exectune study: seed {s}'s λ sweep stopped; run the same command again to resume")
                return None
        results[s] = json.loads(done.read_text())
    agg = aggregate(results)
    return {"seeds": list(seeds), "lambdas": list(lambdas), "own_lambda": own_lambda(cfg),
            "world": agg["world"], "split": agg["split"], "problems": agg["problems"], "rows": agg["rows"]}


def frontier(rows: Sequence[Mapping[str, Any]]) -> list[tuple[float, Mapping[str, Any]]]:
    """(λ, row) of each λ row, in order of λ."""
    return sorted(((float(r["method"][len(PREFIX):]), r) for r in rows if r["method"].startswith(PREFIX)),
                  key=lambda p: p[0])


def others(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The rows that are not a λ of the sweep; `exectune` is one of them (the demo's λ), so it
    is left out too."""
    return [r for r in rows if not r["method"].startswith(PREFIX) and r["method"] != "exectune"]


def cheaper_and_better(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The λ rows above the strong core's mean accuracy at a lower mean USD per problem; none
    without a strong core row."""
    strong = next((r for r in rows if r["method"] == STRONG), None)
    if strong is None:
        return []
    return [r["method"] for _, r in frontier(rows)
            if r["accuracy"]["mean"] > strong["accuracy"]["mean"]
            and r["usd_per_problem"]["mean"] < strong["usd_per_problem"]["mean"]]
