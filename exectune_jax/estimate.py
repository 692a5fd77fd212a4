"""`exectune estimate`: what a run will cost, per stage, before it spends.

Calls per stage follow from the config (RL: steps x prompts x group size core executions plus
the core-alone rates; eval: problems x samples per method). Acceptance sampling's calls depend
on how often the teacher's strategies fail and get revised, so a pilot runs the real sampling
code on the first `--pilot` training problems (through the pool, with the run's cache and ledger:
the run then replays those calls instead of paying again) and scales its calls and tokens per
problem. Prompt tokens come from the real prompts (the sim's tokenizer, scaled by what the
provider counted in the pilot); output tokens per call from the pilot, or the stated defaults
without one. With `api.follow_check=judge` every guided execution adds one judge call that reads
the problem, the strategy and the core's reply; it is priced at the judge's own rates. Each stage
is priced online and batch, with and without prompt caching (the constant system prompt read from
the provider's cache after the first call).

A trained guide's strategies are stood in for by an accepted one, which the core executes step by
step. Free-form advice (the Advisor baseline) and the untrained base guide's text are not
strategies the core executes: their core calls are projected at the core-alone reply length.

A trained guide often writes, for a problem, a strategy the core has already executed for it:
within an RL group, one accepted in sampling, or at eval the same greedy strategy as another
trained guide of the table. The request is then identical and the call cache replays it for free.
How often depends on the trained guide, which does not exist yet, so it is a stated share
(`TRAINED_REPEAT`): RL's guided calls (the ExecTune preset) and the guided eval calls of every
trained guide after the first pay for the rest. Free-form advice and the base guide's text are
sampled or varied enough that they were never seen to repeat. `--repeat 0` gives the upper bound.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from exectune_jax.api.ledger import PriceTable, load_prices
from exectune_jax.config import BASE_GUIDE_DIR, Config
from exectune_jax.errors import UserError
from exectune_jax.gcop import prompts
from exectune_jax.sim import tokens

# Output tokens per call when no pilot runs (--pilot 0): a numbered strategy, a short solution.
DEFAULT_OUTPUT_TOKENS = {"teacher": 120.0, "core": 60.0, "judge": 20.0}
DEFAULT_STRATEGY = "<strategy>\n1. Multiply 12 by 3.\n2. Add 5 to the result of step 1.\n</strategy>"
# Share of a trained guide's guided calls that repeat a request already sent (replayed free by the
# call cache). Measured on two full default demos: RL 0.374 and 0.532 of its guided executions;
# at eval, the later trained guides repeated an earlier one's strategy on 0.416 and 0.487 of the
# problems. The mean of the four; the spread is the estimate's uncertainty for those lines (two
# later seeds of the same config, not used here: RL 0.655 and 0.394, eval 0.558 and 0.623; RL
# repeats most where it sharpens the guide onto followable strategies).
TRAINED_REPEAT = 0.45


@dataclass(frozen=True)
class Line:
    """Projected calls of one stage to one endpoint."""

    stage: str
    endpoint: str
    model: str
    provider: str
    calls: float
    input_tokens: float
    output_tokens: float
    prefix_tokens: float  # the constant system prompt of each call, cacheable
    batchable: bool
    replayed: float = 0.0  # expected share of the calls repeating an earlier request: not paid


@dataclass(frozen=True)
class Pilot:
    problems: int
    per_problem: Mapping[str, float]  # "<endpoint>.calls|input|output" paid per training problem
    core_output: float  # mean output tokens of a guided core call
    teacher_output: float
    strategy: str  # an accepted strategy, standing in for a trained guide's
    scale: float  # provider-counted / sim-tokenizer input tokens
    alone_output: float = DEFAULT_OUTPUT_TOKENS["core"]  # mean output tokens of a core-alone call
    judge_output: float = DEFAULT_OUTPUT_TOKENS["judge"]  # mean output tokens of a follow-check call


def line_usd(prices: PriceTable, line: Line, *, batch: bool, caching: bool) -> float:
    """USD of a projected line's paid calls (its replays are free); caching: the prefix is written
    once and read by every later call (Anthropic bills the write; OpenAI caches for free)."""
    paid = 1.0 - line.replayed
    calls, input_tokens, output_tokens = line.calls * paid, line.input_tokens * paid, line.output_tokens * paid
    reads = max(0.0, calls - 1) * line.prefix_tokens if caching else 0.0
    writes = line.prefix_tokens if caching and line.provider == "anthropic" and calls else 0.0
    return prices.charge(line.model, line.provider, int(input_tokens), int(output_tokens),
                         cache_read=int(min(reads, input_tokens)),
                         cache_write=int(min(writes, input_tokens - min(reads, input_tokens))),
                         batch=batch and line.batchable)


def prompt_tokens(messages: Sequence[Mapping[str, str]], scale: float) -> float:
    return tokens.count_messages(list(messages)) * scale


def system_tokens(messages: Sequence[Mapping[str, str]], scale: float) -> float:
    return sum(tokens.count(m["content"]) + tokens.MESSAGE_OVERHEAD
               for m in messages if m["role"] == "system") * scale


def judge_system_tokens(scale: float) -> float:
    """The follow check's constant system prompt, the part of a judge call a provider caches."""
    return system_tokens(prompts.judge_follow_messages("", "", ""), scale)


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def core_line(cfg: Config, stage: str, problems: Sequence[Any], family: str, calls_per_problem: float,
              strategy: str | None, output: float, scale: float, *, endpoint: str = "core",
              batchable: bool) -> Line:
    """Core executions of `problems` (each `calls_per_problem` times) with a stand-in strategy."""
    ep = getattr(cfg.api, endpoint)
    msgs = [prompts.core_messages(p, family, strategy) for p in problems]
    n = len(problems) * calls_per_problem
    return Line(stage, endpoint, ep.model, ep.provider, n,
                _mean([prompt_tokens(m, scale) for m in msgs]) * n, output * n,
                _mean([system_tokens(m, scale) for m in msgs]), batchable)


def judge_line(cfg: Config, core: Line, problems: Sequence[Any], strategy: str, judge_output: float,
               scale: float) -> Line | None:
    """The follow check's judge calls for guided core line `core`: one per execution, each reading
    the problem, the strategy and the core's reply (of the projected length)."""
    if cfg.api.follow_check != "judge" or cfg.api.judge is None or not core.calls:
        return None
    ep = cfg.api.judge
    msgs = [prompts.judge_follow_messages(p.prompt, strategy, "") for p in problems]
    per_call = _mean([prompt_tokens(m, scale) for m in msgs]) + core.output_tokens / core.calls * scale
    return Line(core.stage, "judge", ep.model, ep.provider, core.calls, per_call * core.calls,
                judge_output * core.calls, judge_system_tokens(scale), core.batchable)


def guided_lines(cfg: Config, stage: str, problems: Sequence[Any], family: str, calls_per_problem: float,
                 strategy: str, output: float, judge_output: float, scale: float, *,
                 batchable: bool, replayed: float = 0.0) -> list[Line]:
    """Guided core executions and the judge calls that check them; `replayed`: the share that
    repeats an earlier request (its judge call then repeats too)."""
    core = replace(core_line(cfg, stage, problems, family, calls_per_problem, strategy, output, scale,
                             batchable=batchable), replayed=replayed)
    judge = judge_line(cfg, core, problems, strategy, judge_output, scale)
    return [core] if judge is None else [core, replace(judge, replayed=replayed)]


def _endpoint(stage: str) -> str:
    """The endpoint of a ledger row of acceptance sampling, from its stage name."""
    return next((e for e in ("judge", "teacher") if stage.endswith(f".{e}")), "core")


def _fingerprint(cfg: Config, n: int) -> str:
    return json.dumps([n, cfg.task.name, cfg.task.options, asdict(cfg.sample), cfg.api.core.model,
                       cfg.api.teacher.model], sort_keys=True, default=str)


def run_pilot(cfg: Config, n: int) -> Pilot | None:
    """Acceptance sampling (and one core-alone call each) on the first `n` training problems,
    through the run's pool. Only paid calls count: a replay within the pilot is a duplicate
    request the run will not pay for either. The measurement is kept in
    run_dir/estimate_pilot.json, since a second pilot would find everything cached."""
    from exectune_jax.api import open_pool
    from exectune_jax.gcop.execute import execute_many
    from exectune_jax.train.acceptance import sample_candidates, training_problems

    if n <= 0:
        return None
    kept = Path(cfg.run_dir) / "estimate_pilot.json"
    if kept.exists():
        data = json.loads(kept.read_text())
        if data.get("fingerprint") == _fingerprint(cfg, n):
            return Pilot(**data["pilot"])
    ledger = Path(cfg.run_dir) / "ledger.jsonl"
    if ledger.exists() and ledger.stat().st_size:
        print(f"no pilot: {cfg.run_dir} already holds paid calls, so a pilot could not tell its own "
              "work from replays (estimate before the first stage, in a fresh run_dir, to get one)")
        return None
    task, problems = training_problems(cfg)
    problems = problems[:n]
    start = 0
    with open_pool(cfg, cfg.run_dir) as pool:
        candidates = sample_candidates(pool, task, problems, cfg.sample, unfiltered=False,
                                       stage=cfg.sample.out, core_model=cfg.api.core.model)
        # the core-alone reply length prices RL's core_only baseline (RL replays these calls for
        # the pilot's problems it happens to draw)
        execute_many(pool, task, [(p, None) for p in problems], stage="core_only")
        if pool.stopped:
            raise UserError(f"the pilot of {len(problems)} problems reached api.budget_usd="
                            f"{cfg.api.budget_usd}; use a smaller --pilot (0: stated defaults) or raise the budget")
    with open(ledger, "rb") as f:
        f.seek(start)
        rows = [json.loads(line) for line in f.read().decode().splitlines()]
    per: dict[str, float] = {}
    outs: dict[str, list[int]] = {"teacher": [], "core": [], "judge": [], "alone": []}
    for row in rows:
        if row["stage"] == "core_only":
            outs["alone"].append(row["output_tokens"])
            continue
        if row["cached"]:
            continue
        endpoint = _endpoint(row["stage"])
        per[f"{endpoint}.calls"] = per.get(f"{endpoint}.calls", 0.0) + 1 / len(problems)
        per[f"{endpoint}.input"] = per.get(f"{endpoint}.input", 0.0) + row["input_tokens"] / len(problems)
        per[f"{endpoint}.output"] = per.get(f"{endpoint}.output", 0.0) + row["output_tokens"] / len(problems)
        outs[endpoint].append(row["output_tokens"])
    accepted = [c.completion for c in candidates if c.status == "accepted" and c.completion]
    # provider-counted over sim-counted tokens of the same prompts: round 0's proposals
    counted = sum(tokens.count_messages(prompts.teacher_propose_messages(p, task.family))
                  for p in problems) * cfg.sample.proposals
    first = [r for r in rows if r["stage"].endswith(".teacher")][: len(problems) * cfg.sample.proposals]
    scale = sum(r["input_tokens"] for r in first) / counted if counted and first else 1.0
    pilot = Pilot(len(problems), per, _mean(outs["core"]) or DEFAULT_OUTPUT_TOKENS["core"],
                  _mean(outs["teacher"]) or DEFAULT_OUTPUT_TOKENS["teacher"],
                  accepted[0] if accepted else DEFAULT_STRATEGY, scale,
                  _mean(outs["alone"]) or DEFAULT_OUTPUT_TOKENS["core"],
                  _mean(outs["judge"]) or DEFAULT_OUTPUT_TOKENS["judge"])
    kept.write_text(json.dumps({"fingerprint": _fingerprint(cfg, n), "pilot": asdict(pilot)}, indent=2) + "\n")
    return pilot


def project(cfg: Config, pilot: Pilot | None, *, rl_stages: Sequence[tuple[str, str]] | None = None,
            unfiltered: bool = False, repeat: float = TRAINED_REPEAT) -> list[Line]:
    """Projected lines of every stage the config runs, in run order; `rl_stages`: (name, preset)
    of each RL stage, by default the config's one; `repeat`: the share of a trained guide's
    guided calls replayed from the cache (module docstring)."""
    from exectune_jax.data import tasks
    from exectune_jax.train.acceptance import training_problems

    task, train = training_problems(cfg)
    family = task.family
    scale = pilot.scale if pilot else 1.0
    core_out = pilot.core_output if pilot else DEFAULT_OUTPUT_TOKENS["core"]
    alone_out = pilot.alone_output if pilot else DEFAULT_OUTPUT_TOKENS["core"]
    judge_out = pilot.judge_output if pilot else DEFAULT_OUTPUT_TOKENS["judge"]
    rl_stages = rl_stages or ((cfg.rl.name, cfg.rl.preset),)
    strategy = pilot.strategy if pilot else DEFAULT_STRATEGY
    lines: list[Line] = []
    stage = cfg.sample.out
    teacher, core = cfg.api.teacher, cfg.api.core
    if pilot:
        per = pilot.per_problem
        t_calls = per.get("teacher.calls", 0.0) * len(train)
        t_sys = _mean([system_tokens(prompts.teacher_propose_messages(p, family), scale) for p in train[:64]])
        lines.append(Line(stage, "teacher", teacher.model, teacher.provider, t_calls,
                          per.get("teacher.input", 0.0) * len(train), per.get("teacher.output", 0.0) * len(train),
                          t_sys, True))
        c_calls = per.get("core.calls", 0.0) * len(train)
        c_sys = _mean([system_tokens(prompts.core_messages(p, family, None), scale) for p in train[:64]])
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
                          _mean([prompt_tokens(m, scale) for m in msgs]) * n,
                          DEFAULT_OUTPUT_TOKENS["teacher"] * n, _mean([system_tokens(m, scale) for m in msgs]), True))
        lines += guided_lines(cfg, stage, train, family, cfg.sample.proposals * cfg.sample.verify_samples,
                              strategy, core_out, judge_out, scale, batchable=True)
    if unfiltered:  # the same proposal prompts: replays of the filtered run's first round when it ran first
        lines.append(Line("sample_unfiltered", "teacher", teacher.model, teacher.provider, 0.0, 0.0, 0.0, 0.0, True))
    rl = cfg.rl
    distinct = train[: min(len(train), rl.steps * rl.prompts_per_step)]
    for i, (name, preset) in enumerate(rl_stages):
        out = alone_out if preset == "advisor" else core_out
        lines += guided_lines(cfg, name, [train[j % len(train)] for j in range(rl.steps * rl.prompts_per_step)],
                              family, rl.group_size, strategy, out, judge_out, scale, batchable=False,
                              replayed=0.0 if preset == "advisor" else repeat)
        if i == 0 and cfg.rl.core_only_samples and distinct:  # later RL stages replay these
            lines.append(core_line(cfg, "core_only", distinct, family, rl.core_only_samples, None, alone_out,
                                   scale, batchable=False))
    if rl.held_out:
        validation = task.problems("validation")[: rl.held_out]
        for name, preset in rl_stages:
            out = alone_out if preset == "advisor" else core_out
            lines += guided_lines(cfg, "rl_eval", validation, family, 2, strategy, out, judge_out, scale,
                                  batchable=False)
    ev = cfg.eval
    # the eval stage's own prompts, read as the eval stage reads them: their lengths price its
    # calls, and nothing else of this estimate sees them (tasks guard the test split)
    with tasks.reading_as("eval"):
        test = tasks.get(cfg.task.name, **cfg.task.options).problems(ev.split)
    test = test[: ev.n_problems] if ev.n_problems is not None else test
    lines.append(core_line(cfg, "eval", test, family, ev.samples, None, alone_out, scale, batchable=True))
    # trained guides' strategies are executed (the first one's all paid, the later ones' repeating
    # it in part); advice and the base guide's text leave the core on its own
    executed = sum(name not in ev.advisor_methods and Path(path).name != BASE_GUIDE_DIR
                   for name, path in ev.guides.items())
    for guides, out, replayed in ((min(executed, 1), core_out, 0.0), (executed - 1, core_out, repeat),
                                  (len(ev.guides) - executed, alone_out, 0.0)):
        if guides > 0:
            lines += guided_lines(cfg, "eval", test, family, ev.samples * guides, strategy, out,
                                  judge_out, scale, batchable=True, replayed=replayed)
    if ev.core_strong and cfg.api.core_strong is not None:
        lines.append(core_line(cfg, "eval", test, family, ev.samples, None, alone_out, scale,
                               endpoint="core_strong", batchable=True))
    return lines


def stage_table(prices: PriceTable, lines: Sequence[Line]) -> list[dict]:
    """One row per stage: calls, tokens and USD in the four ways of sending them."""
    rows: dict[str, dict] = {}
    for line in lines:
        row = rows.setdefault(line.stage, {"stage": line.stage, "calls": 0.0, "input_tokens": 0.0,
                                           "output_tokens": 0.0, "online_usd": 0.0, "online_cached_usd": 0.0,
                                           "batch_usd": 0.0, "batch_cached_usd": 0.0, "batchable": line.batchable,
                                           "replayed_calls": 0.0})
        row["calls"] += line.calls
        row["replayed_calls"] += line.calls * line.replayed
        row["input_tokens"] += line.input_tokens
        row["output_tokens"] += line.output_tokens
        for key, batch, caching in (("online_usd", False, False), ("online_cached_usd", False, True),
                                    ("batch_usd", True, False), ("batch_cached_usd", True, True)):
            row[key] += line_usd(prices, line, batch=batch, caching=caching)
    return list(rows.values())


def expected_usd(cfg: Config, row: Mapping) -> float:
    """What the run is projected to pay for a stage as configured (caching as the provider does)."""
    from exectune_jax.api.batching import stage_mode

    batch = row["batchable"] and stage_mode(cfg.api, row["stage"]) == "batch"
    return row["batch_cached_usd" if batch else "online_cached_usd"]


def budget_warnings(cfg: Config, rows: Sequence[Mapping], spent: float = 0.0) -> list[str]:
    budget = cfg.api.budget_usd
    if budget is None:
        return []
    out, total = [], spent
    for row in rows:
        total += expected_usd(cfg, row)
        if total > budget:
            out.append(f"warning: api.budget_usd=${budget:.4f} would stop stage {row['stage']} "
                       f"(projected ${total:.4f} by its end); raise api.budget_usd or shrink the stage")
            break
    return out


def format_table(rows: Sequence[Mapping], cfg: Config) -> str:
    head = ("| stage | calls | replayed | input tokens | output tokens | online $ | online+cache $ "
            "| batch $ | batch+cache $ | as configured $ |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    body = ""
    for r in rows:
        batch = (f"{r['batch_usd']:.4f} | {r['batch_cached_usd']:.4f}" if r["batchable"]
                 else "online only | online only")
        body += (f"| {r['stage']} | {r['calls']:.0f} | {r['replayed_calls']:.0f} "
                 f"| {r['input_tokens']:.0f} | {r['output_tokens']:.0f} "
                 f"| {r['online_usd']:.4f} | {r['online_cached_usd']:.4f} | {batch} "
                 f"| {expected_usd(cfg, r):.4f} |\n")
    total = sum(expected_usd(cfg, r) for r in rows)
    return head + body + (f"| total | {sum(r['calls'] for r in rows):.0f} "
                          f"| {sum(r['replayed_calls'] for r in rows):.0f} | | | | | | | {total:.4f} |\n")


def run(cfg: Config, pilot: int = 8, demo: bool = False, quick: bool = False,
        repeat: float | None = None, **_: Any) -> int:
    """`exectune estimate`: the table, budget warnings, and run_dir/estimate.json."""
    repeat = TRAINED_REPEAT if repeat is None else repeat
    if not 0.0 <= repeat < 1.0:
        raise UserError(f"--repeat {repeat}: a share of calls, at least 0 and below 1")
    if demo or quick:
        from exectune_jax.demo import prepare

        cfg = prepare(cfg, None, quick)
    found = run_pilot(cfg, pilot)
    prices = load_prices(cfg.api.prices)
    stages = (("advisor_rl", "advisor"), ("rl", "exectune")) if demo or quick else None
    rows = stage_table(prices, project(cfg, found, rl_stages=stages, unfiltered=demo or quick,
                                       repeat=repeat))
    out = Path(cfg.run_dir) / "estimate.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"prices_read_on": prices.read_on,
                               "pilot": asdict(found) if found else None,
                               "output_tokens_default": None if found else DEFAULT_OUTPUT_TOKENS,
                               "trained_repeat": repeat,
                               "stages": rows}, indent=2) + "\n")
    print(format_table(rows, cfg), end="")
    print(f"prices read on {prices.read_on}; output tokens per call "
          + (f"from a pilot of {found.problems} problems (cached: the run replays it)" if found
             else f"from the stated defaults {DEFAULT_OUTPUT_TOKENS}"))
    print(f"replayed: a trained guide's guided calls repeating a request already sent ({repeat:.0%} "
          f"of RL's and of each later guide's at eval; RL measured 37-66% on default demos), free from "
          f"the call cache; --repeat 0 prices them all")
    for warning in budget_warnings(cfg, rows):
        print(warning)
    print(f"written to {out}")
    return 0
