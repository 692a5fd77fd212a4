"""Pricing and projection of a run's API calls, pure: what each stage's calls cost, before it runs.

A projected `Line` is one stage's calls to one endpoint: calls, input and output tokens, the
constant system prompt a provider may cache, whether the stage may send them as a batch, and the
share expected to repeat an earlier request (replayed free by the call cache). Prompt tokens
come from the real prompts (counted by tokens.py, scaled by what the provider counted in a
pilot); output tokens per call from a pilot (`Pilot`), or the stated defaults without one. With
`api.follow_check=judge` every guided execution adds one judge call that reads the problem, the
strategy and the core's reply; it is priced at the judge's own rates. Each stage is priced online
and batch, with and without prompt caching (the constant system prompt read from the provider's
cache after the first call).

A trained guide's strategies are stood in for by an accepted one, which the core executes step by
step. Free-form advice (the Advisor baseline) and the untrained base guide's text are not
strategies the core executes: their core calls are projected at the core-alone reply length
times a stated ratio (`ADVICE_LENGTHENS`).

The `estimate` command (estimate.py) and RL's forecast before its first paid call
(train/forecast.py) both price with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from exectune_jax import tokens
from exectune_jax.api.batching import stage_mode
from exectune_jax.api.ledger import PriceTable
from exectune_jax.config import Config
from exectune_jax.gcop import prompts


# Output tokens per call when no pilot runs (--pilot 0): a numbered strategy, a short solution.
DEFAULT_OUTPUT_TOKENS = {"teacher": 120.0, "core": 60.0, "judge": 20.0}
DEFAULT_STRATEGY = "<strategy>\n1. Multiply 12 by 3.\n2. Add 5 to the result of step 1.\n</strategy>"
# Share of a trained guide's guided calls that repeat a request already sent (replayed free by the
# call cache), where no guide pilot measures it: the mean of RL's and eval's measured shares on
# full default demos, its spread the estimate's uncertainty for those lines (the measurements:
# docs/real-apis.md, "Where estimate's stated numbers come from").
TRAINED_REPEAT = 0.45
# Free-form advice (the Advisor baseline, the base guide's text) leaves the core reasoning on its
# own, and its reply is longer than alone: it restates the advice as it goes. A stated ratio of
# advice-guided to core-alone output tokens, since a pilot cannot see it without paying for the
# advice's executions (measured on full default demos: docs/real-apis.md, same section).
ADVICE_LENGTHENS = 220.6 / 191.0


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
    source: str = ""  # where `replayed` comes from


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


def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def with_strategy(problems: Sequence[Any], strategy: str | None) -> list[tuple[Any, str | None]]:
    return [(p, strategy) for p in problems]


def core_line(cfg: Config, stage: str, items: Sequence[tuple[Any, str | None]], family: str,
              calls_per_item: float, output: float, scale: float, *, endpoint: str = "core",
              batchable: bool) -> Line:
    """Core executions of `items` ((problem, strategy; None = the core alone) each
    `calls_per_item` times)."""
    ep = getattr(cfg.api, endpoint)
    msgs = [prompts.core_messages(p, family, s) for p, s in items]
    n = len(items) * calls_per_item
    return Line(stage, endpoint, ep.model, ep.provider, n,
                mean([prompt_tokens(m, scale) for m in msgs]) * n, output * n,
                mean([system_tokens(m, scale) for m in msgs]), batchable)


def judge_line(cfg: Config, core: Line, items: Sequence[tuple[Any, str]], judge_output: float,
               scale: float) -> Line | None:
    """The follow check's judge calls for guided core line `core`: one per execution, each reading
    the problem, the strategy and the core's reply (of the projected length)."""
    if cfg.api.follow_check != "judge" or cfg.api.judge is None or not core.calls:
        return None
    ep = cfg.api.judge
    msgs = [prompts.judge_follow_messages(p.prompt, s, "") for p, s in items]
    per_call = mean([prompt_tokens(m, scale) for m in msgs]) + core.output_tokens / core.calls * scale
    return Line(core.stage, "judge", ep.model, ep.provider, core.calls, per_call * core.calls,
                judge_output * core.calls, judge_system_tokens(scale), core.batchable)


def guided_lines(cfg: Config, stage: str, items: Sequence[tuple[Any, str]], family: str,
                 calls_per_item: float, output: float, judge_output: float, scale: float, *,
                 batchable: bool, replayed: float = 0.0, source: str = "", endpoint: str = "core") -> list[Line]:
    """Guided core executions (by the core endpoint `endpoint`) and the judge calls that check
    them; `replayed`: the share that repeats an earlier request (its judge call then repeats too)."""
    core = replace(core_line(cfg, stage, items, family, calls_per_item, output, scale, endpoint=endpoint,
                             batchable=batchable), replayed=replayed, source=source)
    judge = judge_line(cfg, core, items, judge_output, scale)
    return [core] if judge is None else [core, replace(judge, replayed=replayed, source=source)]


# ---------------------------------------------------------------------------------------------
# A pilot's measurement


def _endpoint(stage: str) -> str:
    """The endpoint of a ledger row of acceptance sampling, from its stage name."""
    return next((e for e in ("judge", "teacher") if stage.endswith(f".{e}")), "core")


def pilot_from_rows(cfg: Config, family: str, problems: Sequence[Any], rows: Sequence[Mapping],
                    strategy: str | None) -> Pilot:
    """The pilot's measurement from the ledger rows of acceptance sampling on `problems` (core-alone
    rows: its `<out>.core_alone` calls and the `core_only` ones): paid calls and tokens per problem
    (a replay is a duplicate request the run will not pay for either) and output tokens per call,
    the guided core calls apart from the core alone's."""
    per: dict[str, float] = {}
    outs: dict[str, list[int]] = {"teacher": [], "core": [], "judge": [], "alone": []}
    for row in rows:
        alone = row["stage"] == "core_only" or row["stage"].endswith(".core_alone")
        if alone:
            outs["alone"].append(row["output_tokens"])
        if row["cached"] or row["stage"] == "core_only":
            continue
        endpoint = _endpoint(row["stage"])
        for key, value in (("calls", 1), ("input", row["input_tokens"]), ("output", row["output_tokens"])):
            per[f"{endpoint}.{key}"] = per.get(f"{endpoint}.{key}", 0.0) + value / len(problems)
        if not alone:
            outs[endpoint].append(row["output_tokens"])
    # provider-counted over sim-counted tokens of the same prompts: round 0's proposals
    counted = sum(tokens.count_messages(prompts.teacher_propose_messages(p, family))
                  for p in problems) * cfg.sample.proposals
    first = [r for r in rows if r["stage"].endswith(".teacher")][: len(problems) * cfg.sample.proposals]
    scale = sum(r["input_tokens"] for r in first) / counted if counted and first else 1.0
    return Pilot(len(problems), per, mean(outs["core"]) or DEFAULT_OUTPUT_TOKENS["core"],
                 mean(outs["teacher"]) or DEFAULT_OUTPUT_TOKENS["teacher"],
                 strategy or DEFAULT_STRATEGY, scale,
                 mean(outs["alone"]) or DEFAULT_OUTPUT_TOKENS["core"],
                 mean(outs["judge"]) or DEFAULT_OUTPUT_TOKENS["judge"])


def measures(pilot: Pilot | None) -> tuple[float, str, float, float, float]:
    """(token scale, stand-in strategy, output tokens of a guided core call, of a core-alone call,
    of a judge call): the pilot's, or the stated defaults."""
    if pilot is None:
        d = DEFAULT_OUTPUT_TOKENS
        return 1.0, DEFAULT_STRATEGY, d["core"], d["core"], d["judge"]
    return pilot.scale, pilot.strategy, pilot.core_output, pilot.alone_output, pilot.judge_output


# ---------------------------------------------------------------------------------------------
# Tables


def stage_table(prices: PriceTable, lines: Sequence[Line]) -> list[dict]:
    """One row per stage: calls, tokens and USD in the four ways of sending them."""
    rows: dict[str, dict] = {}
    for line in lines:
        row = rows.setdefault(line.stage, {"stage": line.stage, "calls": 0.0, "input_tokens": 0.0,
                                           "output_tokens": 0.0, "online_usd": 0.0, "online_cached_usd": 0.0,
                                           "batch_usd": 0.0, "batch_cached_usd": 0.0, "batchable": line.batchable,
                                           "replayed_calls": 0.0, "replayed_from": ""})
        row["calls"] += line.calls
        row["replayed_calls"] += line.calls * line.replayed
        row["input_tokens"] += line.input_tokens
        row["output_tokens"] += line.output_tokens
        row["replayed_from"] = row["replayed_from"] or line.source
        for key, batch, caching in (("online_usd", False, False), ("online_cached_usd", False, True),
                                    ("batch_usd", True, False), ("batch_cached_usd", True, True)):
            row[key] += line_usd(prices, line, batch=batch, caching=caching)
    return list(rows.values())


def expected_usd(cfg: Config, row: Mapping) -> float:
    """What the run is projected to pay for a stage as configured (caching as the provider does)."""
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
    head = ("| stage | calls | replayed | replayed from | input tokens | output tokens | online $ "
            "| online+cache $ | batch $ | batch+cache $ | as configured $ |\n"
            "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|\n")
    body = ""
    for r in rows:
        batch = (f"{r['batch_usd']:.4f} | {r['batch_cached_usd']:.4f}" if r["batchable"]
                 else "online only | online only")
        body += (f"| {r['stage']} | {r['calls']:.0f} | {r['replayed_calls']:.0f} | {r['replayed_from']} "
                 f"| {r['input_tokens']:.0f} | {r['output_tokens']:.0f} "
                 f"| {r['online_usd']:.4f} | {r['online_cached_usd']:.4f} | {batch} "
                 f"| {expected_usd(cfg, r):.4f} |\n")
    total = sum(expected_usd(cfg, r) for r in rows)
    return head + body + (f"| total | {sum(r['calls'] for r in rows):.0f} "
                          f"| {sum(r['replayed_calls'] for r in rows):.0f} | | | | | | | | {total:.4f} |\n")
