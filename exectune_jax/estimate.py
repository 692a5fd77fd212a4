"""`exectune estimate`: what a run will cost, per stage, before it spends.

Calls per stage follow from the config (RL: steps x prompts x group size core executions plus
the core-alone rates; eval: problems x samples per method). Acceptance sampling's calls depend
on how often the teacher's strategies fail and get revised, so a pilot runs the real sampling
code on the first `--pilot` training problems (through the pool, with the run's cache and ledger:
the run then replays those calls instead of paying again) and scales its calls and tokens per
problem. In a run_dir whose acceptance sampling has finished, no pilot runs: that stage's own
ledger rows are the measurement. Where an RL stage's start guide exists, its guide pilot
(train/forecast.py) measures the share of RL's guided calls the call cache answers; elsewhere
that share is a stated one, and `--repeat 0` gives the upper bound. The lines are priced by
cost.py.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from exectune_jax import layout, parallel
from exectune_jax.api import open_pool
from exectune_jax.api.ledger import load_prices
from exectune_jax.config import Config
from exectune_jax.cost import (ADVICE_LENGTHENS, DEFAULT_OUTPUT_TOKENS, TRAINED_REPEAT, Line, Pilot,
                               budget_warnings, core_line, format_table, guided_lines, judge_system_tokens,
                               mean, measures, pilot_from_rows, prompt_tokens, stage_table, system_tokens,
                               with_strategy)
from exectune_jax.data import tasks
from exectune_jax.demo.recipe import NEXT_CORE, prepare, stage_configs
from exectune_jax.errors import UserError
from exectune_jax.gcop import prompts
from exectune_jax.gcop.execute import execute_many
from exectune_jax.io import write_json_atomic
from exectune_jax.layout import BASE_GUIDE_DIR
from exectune_jax.models import hf
from exectune_jax.sim import serving
from exectune_jax.train import rewards
from exectune_jax.train.acceptance import sample_candidates, training_problems
from exectune_jax.train.forecast import (GuidePilot, core_only_line, ledger_rows, measured_pilot,
                                         pilot_of_model, rl_lines, rl_worst_case)
from exectune_jax.train.grpo import DTYPES, prompts_that_fit, resolve_init
from exectune_jax.train.problem_pool import rl_pool


def _fingerprint(cfg: Config, n: int) -> str:
    return json.dumps([n, cfg.task.name, cfg.task.options, asdict(cfg.sample), cfg.api.core.model,
                       cfg.api.teacher.model], sort_keys=True, default=str)


def run_pilot(cfg: Config, n: int) -> Pilot | None:
    """Acceptance sampling (and one core-alone call each) on the first `n` training problems,
    through the run's pool. The measurement is kept in run_dir/estimate_pilot.json, since a
    second pilot would find everything cached."""
    if n <= 0:
        return None
    kept = layout.estimate_pilot(cfg.run_dir)
    if kept.exists():
        data = json.loads(kept.read_text())
        if data.get("fingerprint") == _fingerprint(cfg, n):
            return Pilot(**data["pilot"])
    ledger = layout.ledger(cfg.run_dir)
    if ledger.exists() and ledger.stat().st_size:
        print(f"no pilot: {cfg.run_dir} already holds paid calls, so a pilot could not tell its own "
              "work from replays (estimate before the first stage, in a fresh run_dir, to get one)")
        return None
    task, problems = training_problems(cfg)
    problems = problems[:n]
    with serving(cfg) as served, open_pool(served, cfg.run_dir) as pool:
        candidates = sample_candidates(pool, task, problems, cfg.sample, unfiltered=False,
                                       stage=cfg.sample.out, core_model=cfg.api.core.model)
        # the core-alone reply length prices RL's core_only baseline (RL replays these calls for
        # the pilot's problems it happens to draw)
        execute_many(pool, task, [(p, None) for p in problems], stage="core_only")
        if pool.stopped:
            raise UserError(f"the pilot of {len(problems)} problems reached api.budget_usd="
                            f"{cfg.api.budget_usd}; use a smaller --pilot (0: stated defaults) or raise the budget")
        failures = pool.stats["failures"]
        if failures:
            kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(failures.items()))
            raise UserError(f"{sum(failures.values())} of the pilot's calls failed ({kinds}); a "
                            "projection from it would leave out what they cost. Check api.core, "
                            "api.teacher and api.judge and run again (answered calls are cached)")
    accepted = [c.completion for c in candidates if c.status == "accepted" and c.completion]
    pilot = pilot_from_rows(cfg, task.family, problems, ledger_rows(ledger),
                            accepted[0] if accepted else None)
    write_json_atomic(kept, {"fingerprint": _fingerprint(cfg, n), "pilot": asdict(pilot)})
    return pilot


def start_guide_pilot(cfg: Config, batches: int) -> GuidePilot | None:
    """The guide pilot of the config's RL stage when its start guide exists, else None."""
    from transformers import AutoTokenizer

    try:
        init = resolve_init(cfg)
    except UserError:
        return None
    spec = rewards.make_spec(cfg.rl.preset, cfg.rl.weights)
    tokenizer = AutoTokenizer.from_pretrained(init)
    mesh = parallel.make_mesh(cfg.mesh)
    # as RL samples: the parameters cast to the compute dtype
    model, _ = hf.load(init, mesh=mesh, dtype=DTYPES[cfg.model.dtype], remat=cfg.model.remat)
    task = tasks.for_run(cfg.task.name, cfg.task.options, cfg.run_dir)
    problems = prompts_that_fit(rl_pool(task.problems("train"), cfg.rl.problems, cfg.sample.n_problems),
                                tokenizer, task.family, spec, cfg)
    return pilot_of_model(cfg, spec, model, tokenizer, problems, mesh, batches)


def project(cfg: Config, pilot: Pilot | None, *, rl_stages: Sequence[tuple[str, str]] | None = None,
            unfiltered: bool = False, repeat: float = TRAINED_REPEAT,
            guides: Mapping[str, GuidePilot] | None = None,
            rl_cores: Mapping[str, str] | None = None) -> list[Line]:
    """Projected lines of every stage the config runs, in run order; `rl_stages`: (name, preset)
    of each RL stage, by default the config's one; `repeat`: the share of a trained guide's
    guided calls replayed from the cache where `guides` (RL stage name -> its guide pilot) has no
    measurement (train/forecast.py); `rl_cores`: RL stage name -> the api endpoint it trains
    against where that is not `core` (its calls and its core-alone baseline at that price)."""
    task, train = training_problems(cfg)
    family = task.family
    scale, strategy, core_out, alone_out, judge_out = measures(pilot)
    advice_out = alone_out * ADVICE_LENGTHENS
    rl_stages = rl_stages or ((cfg.rl.name, cfg.rl.preset),)
    lines: list[Line] = []
    stage = cfg.sample.out
    teacher, core = cfg.api.teacher, cfg.api.core
    if pilot:
        per = pilot.per_problem
        t_calls = per.get("teacher.calls", 0.0) * len(train)
        t_sys = mean([system_tokens(prompts.teacher_propose_messages(p, family), scale) for p in train[:64]])
        lines.append(Line(stage, "teacher", teacher.model, teacher.provider, t_calls,
                          per.get("teacher.input", 0.0) * len(train), per.get("teacher.output", 0.0) * len(train),
                          t_sys, True))
        c_calls = per.get("core.calls", 0.0) * len(train)
        c_sys = mean([system_tokens(prompts.core_messages(p, family, None), scale) for p in train[:64]])
        lines.append(Line(stage, "core", core.model, core.provider, c_calls,
                          per.get("core.input", 0.0) * len(train), per.get("core.output", 0.0) * len(train),
                          c_sys, True))
        if per.get("judge.calls"):
            lines.append(Line(stage, "judge", cfg.api.judge.model, cfg.api.judge.provider,
                              per["judge.calls"] * len(train), per.get("judge.input", 0.0) * len(train),
                              per.get("judge.output", 0.0) * len(train), judge_system_tokens(scale), True))
    else:  # no pilot: every proposal executed once, no revisions (a lower bound)
        msgs = [prompts.teacher_propose_messages(p, family) for p in train]
        n = len(train) * cfg.sample.proposals
        lines.append(Line(stage, "teacher", teacher.model, teacher.provider, n,
                          mean([prompt_tokens(m, scale) for m in msgs]) * n,
                          DEFAULT_OUTPUT_TOKENS["teacher"] * n, mean([system_tokens(m, scale) for m in msgs]), True))
        lines += guided_lines(cfg, stage, with_strategy(train, strategy), family,
                              cfg.sample.proposals * cfg.sample.verify_samples, core_out, judge_out, scale,
                              batchable=True)
    if unfiltered:  # the same proposal prompts: replays of the filtered run's first round when it ran first
        lines.append(Line("sample_unfiltered", "teacher", teacher.model, teacher.provider, 0.0, 0.0, 0.0, 0.0, True))
    rl = cfg.rl
    drawn = rl_worst_case(cfg, rl_pool(task.problems("train"), rl.problems, cfg.sample.n_problems),
                          rl.steps)
    measured: set[str] = set()  # the first stage to measure a core alone pays; later ones replay it
    for name, preset in rl_stages:
        core = (rl_cores or {}).get(name, "core")
        lines += rl_lines(cfg, name, preset, drawn, family, (guides or {}).get(name), strategy=strategy,
                          core_out=core_out, advice_out=advice_out, judge_out=judge_out, scale=scale,
                          repeat=repeat, endpoint=core)
        if (core not in measured and rl.core_only_samples
                and rewards.make_spec(preset, rl.weights).uses_core_alone):
            lines.append(core_only_line(cfg, drawn, train, family, alone_out, scale, endpoint=core))
            measured.add(core)
    if rl.held_out:
        validation = task.problems("validation")[: rl.held_out]
        for name, preset in rl_stages:
            out = advice_out if preset == "advisor" else core_out
            lines += guided_lines(cfg, "rl_eval", with_strategy(validation, strategy), family, 2, out,
                                  judge_out, scale, batchable=False)
    ev = cfg.eval
    # the eval stage's own prompts, read as the eval stage reads them: their lengths price its
    # calls, and nothing else of this estimate sees them (tasks guard the test split)
    with tasks.reading_as("eval"):
        test = tasks.get(cfg.task.name, **cfg.task.options).problems(ev.split)
    test = test[: ev.n_problems] if ev.n_problems is not None else test
    # trained guides' strategies are executed (the first one's all paid, the later ones' repeating
    # it in part); advice and the base guide's text leave the core on its own. Each core of
    # eval.cores executes them all, under its own stages
    executed = sum(name not in ev.advisor_methods and Path(path).name != BASE_GUIDE_DIR
                   for name, path in ev.guides.items())
    for k, core in enumerate(ev.cores):
        stage = "eval" if k == 0 else f"eval.{core}"
        lines.append(core_line(cfg, stage, with_strategy(test, None), family, ev.samples, alone_out, scale,
                               endpoint=core, batchable=True))
        for guides_n, out, replayed in ((min(executed, 1), core_out, 0.0), (executed - 1, core_out, repeat),
                                        (len(ev.guides) - executed, advice_out, 0.0)):
            if guides_n > 0:
                lines += guided_lines(cfg, stage, with_strategy(test, strategy), family, ev.samples * guides_n,
                                      out, judge_out, scale, batchable=True, replayed=replayed,
                                      source=f"stated {repeat:.0%}" if replayed else "", endpoint=core)
    if ev.core_strong and cfg.api.core_strong is not None:
        lines.append(core_line(cfg, "eval", with_strategy(test, None), family, ev.samples, alone_out,
                               scale, endpoint="core_strong", batchable=True))
    return lines


def rl_stage_configs(cfg: Config, demo: bool) -> dict[str, Config]:
    """Each RL stage's config by name: the demo's (rl_next while it adapts to the next core), or
    the config's one."""
    if not demo:
        return {cfg.rl.name: cfg}
    configs = stage_configs(cfg)
    return {name: configs[name] for name in ("advisor_rl", "rl", "rl_next") if name in configs}


def rl_cores(cfg: Config, stage_cfgs: Mapping[str, Config]) -> dict[str, str]:
    """RL stage name -> the api endpoint its core is, for the stages whose core is not `core`."""
    others = [e for e in (NEXT_CORE, "core_strong") if getattr(cfg.api, e) is not None]
    return {name: e for name, c in stage_cfgs.items() if c.api.core != cfg.api.core
            for e in others if getattr(cfg.api, e) == c.api.core}


def run(cfg: Config, pilot: int = 8, demo: bool = False, quick: bool = False,
        repeat: float | None = None, rl_pilot: int | None = None, **_: Any) -> int:
    """`exectune estimate`: the table, budget warnings, and run_dir/estimate.json."""
    repeat = TRAINED_REPEAT if repeat is None else repeat
    rl_pilot = cfg.rl.forecast_batches if rl_pilot is None else rl_pilot
    if not 0.0 <= repeat < 1.0:
        raise UserError(f"--repeat {repeat}: a share of calls, at least 0 and below 1")
    if demo or quick:
        cfg = prepare(cfg, None, quick)
    found = run_pilot(cfg, pilot)
    if found is None and pilot > 0:
        found = measured_pilot(cfg)
    stage_cfgs = rl_stage_configs(cfg, demo or quick)
    guides = {name: g for name, c in stage_cfgs.items()
              if rl_pilot > 0 and (g := start_guide_pilot(c, rl_pilot)) is not None}
    prices = load_prices(cfg.api.prices)
    stages = tuple((name, c.rl.preset) for name, c in stage_cfgs.items())
    rows = stage_table(prices, project(cfg, found, rl_stages=stages, unfiltered=demo or quick,
                                       repeat=repeat, guides=guides, rl_cores=rl_cores(cfg, stage_cfgs)))
    out = Path(cfg.run_dir) / "estimate.json"
    write_json_atomic(out, {
        "prices_read_on": prices.read_on, "pilot": asdict(found) if found else None,
        "output_tokens_default": None if found else DEFAULT_OUTPUT_TOKENS,
        "trained_repeat": repeat, "guide_pilots": {n: g.summary() for n, g in guides.items()},
        "stages": rows})
    print(format_table(rows, cfg), end="")
    print(f"prices read on {prices.read_on}; output tokens per call "
          + (f"from acceptance sampling on {found.problems} problems (a pilot's are cached: the run "
             "replays them)" if found else f"from the stated defaults {DEFAULT_OUTPUT_TOKENS}"))
    for name, g in guides.items():
        print(f"{name}: guide pilot from its start guide: {g.describe()}")
    print(f"replayed elsewhere: a trained guide's guided calls repeating a request already sent "
          f"(stated {repeat:.0%}; RL measured 37-74% on default demos), free from the call cache; "
          "--repeat 0 prices them all")
    for warning in budget_warnings(cfg, rows):
        print(warning)
    print(f"written to {out}")
    return 0
