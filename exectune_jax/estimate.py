"""`exectune estimate`: what a run will cost, per stage, before it spends.

Calls per stage follow from the config (RL: steps x prompts x group size core executions plus
the core-alone rates; eval: problems x samples per method). Acceptance sampling's calls depend
on how often the teacher's strategies fail and get revised, so a pilot runs the real sampling
code on the first `--pilot` training problems (through the pool, with the run's cache and ledger:
the run then replays those calls instead of paying again) and scales its calls and tokens per
problem. Prompt tokens come from the real prompts (the sim's tokenizer, scaled by what the
provider counted in the pilot); output tokens per call from the pilot, or the stated defaults
without one. In a run_dir whose acceptance sampling has finished, no pilot runs: that stage's
own ledger rows are the measurement. With `api.follow_check=judge` every guided execution adds
one judge call that reads the problem, the strategy and the core's reply; it is priced at the
judge's own rates. Each stage is priced online and batch, with and without prompt caching (the
constant system prompt read from the provider's cache after the first call).

A trained guide's strategies are stood in for by an accepted one, which the core executes step by
step. Free-form advice (the Advisor baseline) and the untrained base guide's text are not
strategies the core executes: their core calls are projected at the core-alone reply length
times a stated ratio (`ADVICE_LENGTHENS`).

The call cache replays an identical request for free; two kinds of them are counted:
- RL's core-alone baseline runs `rl.core_only_samples` core calls on each problem RL draws; with
  `sample.max_cost_vs_core` set, acceptance sampling has already sent the first of them (the
  same request, sample index 0) for each of its problems.
- A trained guide often writes, for a problem, a strategy the core has already executed for it:
  within an RL group, one accepted in sampling, or at eval the same greedy strategy as another
  trained guide of the table. When an RL stage's start guide exists (`rl.init`, or the run's SFT
  guide), a guide pilot measures how often: the start guide samples RL's first batches locally,
  as RL will (its prompt iterator, seed and sampler settings: batches 0..rl.staleness are
  exactly the ones RL draws, before its first update), and each core request RL would send is
  looked up in the run's call cache and among the pilot's earlier requests. Later batches are
  sampled from the start guide too, on RL's next prompts, where RL samples from its updated guide.
  It pays nothing, and its texts price the prompts (the base guide's real advice included). It is
  a forecast: RL sharpens the guide as it trains, so later steps can repeat more than the first.
  The RL stage prints it before its first paid call. Without a start guide, and for the later
  trained guides at eval, the share is a stated one (`TRAINED_REPEAT`).
  `--repeat 0` gives the upper bound.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from exectune_jax import layout
from exectune_jax.api.ledger import PriceTable, load_prices
from exectune_jax.config import Config
from exectune_jax.errors import UserError
from exectune_jax.io import read_jsonl, write_json_atomic
from exectune_jax.layout import BASE_GUIDE_DIR
from exectune_jax.gcop import prompts
from exectune_jax.sim import tokens

# Output tokens per call when no pilot runs (--pilot 0): a numbered strategy, a short solution.
DEFAULT_OUTPUT_TOKENS = {"teacher": 120.0, "core": 60.0, "judge": 20.0}
DEFAULT_STRATEGY = "<strategy>\n1. Multiply 12 by 3.\n2. Add 5 to the result of step 1.\n</strategy>"
# Share of a trained guide's guided calls that repeat a request already sent (replayed free by the
# call cache), where no guide pilot measures it. Measured on two full default demos: RL 0.374 and
# 0.532 of its guided executions; at eval, the later trained guides repeated an earlier one's
# strategy on 0.416 and 0.487 of the problems. The mean of the four; the spread is the estimate's
# uncertainty for those lines (two later seeds of the same config, not used here: RL 0.655 and
# 0.394, eval 0.558 and 0.623; RL repeats most where it sharpens the guide onto followable
# strategies).
TRAINED_REPEAT = 0.45
# Free-form advice (the Advisor baseline, the base guide's text) leaves the core reasoning on its
# own, and its reply is longer than alone: it restates the advice as it goes. Measured on one full
# default demo of an earlier version: advisor RL's core replies 220.6 output tokens against the
# core alone's 191.0 in acceptance sampling. A stated ratio: a pilot cannot see it without paying
# for the advice's executions (the next demo, with another base guide: 223.6 against 190.9).
ADVICE_LENGTHENS = 220.6 / 191.0
PILOT_FILE = "estimate_pilot.json"


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


@dataclass(frozen=True)
class GuidePilot:
    """An RL stage's first batches as its start guide samples them, and which of the core requests
    RL would send for them the call cache answers."""

    stage: str
    batches: int
    sampled: int  # texts the guide wrote
    executed: int  # of them sent to the core (the format gate stops the rest)
    replayed: int  # executed requests already cached, or sent earlier in the pilot
    replayed_output: float | None  # mean output tokens of the cached replies; None: none cached
    replayed_se: float = 0.0  # standard error of the replayed share, over the pilot's problems
    # (problem, text) of the requests it pays for (all executed ones when none is paid): their
    # prompts price RL's paid calls
    priced: tuple[tuple[Any, str], ...] = field(default=(), repr=False)

    @property
    def executed_share(self) -> float:
        return self.executed / self.sampled if self.sampled else 0.0

    @property
    def replayed_share(self) -> float:
        return self.replayed / self.executed if self.executed else 0.0

    def summary(self) -> dict:
        return {"stage": self.stage, "batches": self.batches, "sampled": self.sampled,
                "executed": self.executed, "replayed": self.replayed,
                "replayed_share": self.replayed_share, "replayed_se": self.replayed_se,
                "replayed_output": self.replayed_output}

    def describe(self) -> str:
        return (f"{self.executed} of {self.sampled} texts of RL's first {self.batches} batches "
                f"executed, {self.replayed_share:.0%} ± {self.replayed_se:.0%} of them answered by the "
                "call cache (a forecast: RL sharpens its guide as it trains)")


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
                _mean([prompt_tokens(m, scale) for m in msgs]) * n, output * n,
                _mean([system_tokens(m, scale) for m in msgs]), batchable)


def judge_line(cfg: Config, core: Line, items: Sequence[tuple[Any, str]], judge_output: float,
               scale: float) -> Line | None:
    """The follow check's judge calls for guided core line `core`: one per execution, each reading
    the problem, the strategy and the core's reply (of the projected length)."""
    if cfg.api.follow_check != "judge" or cfg.api.judge is None or not core.calls:
        return None
    ep = cfg.api.judge
    msgs = [prompts.judge_follow_messages(p.prompt, s, "") for p, s in items]
    per_call = _mean([prompt_tokens(m, scale) for m in msgs]) + core.output_tokens / core.calls * scale
    return Line(core.stage, "judge", ep.model, ep.provider, core.calls, per_call * core.calls,
                judge_output * core.calls, judge_system_tokens(scale), core.batchable)


def guided_lines(cfg: Config, stage: str, items: Sequence[tuple[Any, str]], family: str,
                 calls_per_item: float, output: float, judge_output: float, scale: float, *,
                 batchable: bool, replayed: float = 0.0, source: str = "") -> list[Line]:
    """Guided core executions and the judge calls that check them; `replayed`: the share that
    repeats an earlier request (its judge call then repeats too)."""
    core = replace(core_line(cfg, stage, items, family, calls_per_item, output, scale,
                             batchable=batchable), replayed=replayed, source=source)
    judge = judge_line(cfg, core, items, judge_output, scale)
    return [core] if judge is None else [core, replace(judge, replayed=replayed, source=source)]


# ---------------------------------------------------------------------------------------------
# The acceptance pilot


def _endpoint(stage: str) -> str:
    """The endpoint of a ledger row of acceptance sampling, from its stage name."""
    return next((e for e in ("judge", "teacher") if stage.endswith(f".{e}")), "core")


def _fingerprint(cfg: Config, n: int) -> str:
    return json.dumps([n, cfg.task.name, cfg.task.options, asdict(cfg.sample), cfg.api.core.model,
                       cfg.api.teacher.model], sort_keys=True, default=str)


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
    return Pilot(len(problems), per, _mean(outs["core"]) or DEFAULT_OUTPUT_TOKENS["core"],
                 _mean(outs["teacher"]) or DEFAULT_OUTPUT_TOKENS["teacher"],
                 strategy or DEFAULT_STRATEGY, scale,
                 _mean(outs["alone"]) or DEFAULT_OUTPUT_TOKENS["core"],
                 _mean(outs["judge"]) or DEFAULT_OUTPUT_TOKENS["judge"])


def _ledger_rows(path: Path) -> list[dict]:
    """The ledger's complete rows (a stage running beside may be appending one)."""
    return [row for _, row in read_jsonl(path)] if path.exists() else []


def run_pilot(cfg: Config, n: int) -> Pilot | None:
    """Acceptance sampling (and one core-alone call each) on the first `n` training problems,
    through the run's pool. The measurement is kept in run_dir/estimate_pilot.json, since a
    second pilot would find everything cached."""
    from exectune_jax.api import open_pool
    from exectune_jax.gcop.execute import execute_many
    from exectune_jax.sim import serving
    from exectune_jax.train.acceptance import sample_candidates, training_problems

    if n <= 0:
        return None
    kept = Path(cfg.run_dir) / PILOT_FILE
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
    pilot = pilot_from_rows(cfg, task.family, problems, _ledger_rows(ledger),
                            accepted[0] if accepted else None)
    write_json_atomic(kept, {"fingerprint": _fingerprint(cfg, n), "pilot": asdict(pilot)})
    return pilot


def measured_pilot(cfg: Config) -> Pilot | None:
    """The measurement of a run_dir where a pilot cannot run: its acceptance sampling, read from
    its ledger once the stage has finished (its summary written), else its kept pilot; None
    when it has neither."""
    from exectune_jax.train.acceptance import training_problems

    out = Path(cfg.run_dir) / cfg.sample.out
    if (out / "summary.json").exists():
        task, problems = training_problems(cfg)
        rows = [r for r in _ledger_rows(layout.ledger(cfg.run_dir))
                if r["stage"].startswith(f"{cfg.sample.out}.")]
        accepted = out / "accepted.jsonl"
        first = accepted.read_text().partition("\n")[0] if accepted.exists() else ""
        return pilot_from_rows(cfg, task.family, problems, rows,
                               json.loads(first)["completion"] if first else None)
    kept = Path(cfg.run_dir) / PILOT_FILE
    return Pilot(**json.loads(kept.read_text())["pilot"]) if kept.exists() else None


# ---------------------------------------------------------------------------------------------
# RL: the problems it draws, the core-alone calls it replays, the guide pilot


def rl_draws(cfg: Config, problems: Sequence[Any], batches: int) -> list[list[Any]]:
    """The problems of RL's first `batches` steps, in order: its own prompt iterator and seed."""
    from exectune_jax.data.pipeline import rl_prompt_iterator

    it = rl_prompt_iterator(problems, cfg.rl.prompts_per_step, cfg.seed)
    return [next(it) for _ in range(batches)]


def core_alone_replays(cfg: Config, drawn_ids: Sequence[str], sampled_ids: Sequence[str]) -> int:
    """RL's core-alone calls that the call cache answers from acceptance sampling: with
    `sample.max_cost_vs_core` set, sampling sent the core alone once (sample index 0, RL's first
    index: the same request) for each problem it sampled."""
    if cfg.sample.max_cost_vs_core is None or cfg.rl.core_only_samples < 1:
        return 0
    return len(set(drawn_ids) & set(sampled_ids))


def replayed_flags(keys: Sequence[str], cached: Callable[[str], bool]) -> list[bool]:
    """For each request key in send order: whether the call cache answers it (`cached` before the
    pilot, or sent earlier in it)."""
    seen: set[str] = set()
    flags = []
    for key in keys:
        flags.append(key in seen or cached(key))
        seen.add(key)
    return flags


def share_se(groups: Sequence[tuple[int, int]]) -> float:
    """Standard error of the pooled share sum(r) / sum(e) over independent groups (r replayed of e
    executed each; a ratio estimator's): by problem, since a problem's group repeats together."""
    groups = [(r, e) for r, e in groups if e]
    n = len(groups)
    if n < 2:
        return 0.0
    share = sum(r for r, _ in groups) / sum(e for _, e in groups)
    mean_e = sum(e for _, e in groups) / n
    return math.sqrt(sum((r - share * e) ** 2 for r, e in groups) / (n * (n - 1))) / mean_e


def core_request_keys(cfg: Config, family: str, items: Sequence[tuple[Any, str | None]]) -> list[str]:
    """The call-cache key of the core request for each (problem, strategy), as the pool makes it."""
    from exectune_jax.api.cache import cache_key
    from exectune_jax.api.pool import normalize_messages
    from exectune_jax.gcop.execute import requests_for

    ep = cfg.api.core
    return [cache_key(ep.provider, ep.model, normalize_messages(r.messages), max_tokens=ep.max_tokens,
                      temperature=ep.temperature, sample_index=r.sample_index)
            for r in requests_for(family, items, stage=cfg.rl.name)]


def guide_pilot(cfg: Config, family: str, spec, rollouts: Sequence[Any],
                cached: Callable[[str], Any]) -> GuidePilot:
    """Which core requests RL would pay for on `rollouts`: the texts the format gate lets through
    (as `label_rollout` does), less those `cached` (key -> the cached reply, or None) or an
    earlier request of the pilot answers."""
    from exectune_jax.gcop import strategy

    texts = [(r.problem_of(i), t) for r in rollouts for i, t in enumerate(r.texts)]
    items = [(p, t) for p, t in texts if strategy.parse(t).ok or not spec.gate]
    keys = core_request_keys(cfg, family, items)
    hits = {k: cached(k) for k in dict.fromkeys(keys)}
    flags = replayed_flags(keys, lambda k: hits[k] is not None)
    paid = tuple(item for item, f in zip(items, flags, strict=True) if not f)
    outputs = [h.output_tokens for h in hits.values() if h is not None]
    groups: dict[str, list[int]] = {}
    for (p, _), f in zip(items, flags, strict=True):
        groups.setdefault(p.id, [0, 0])
        groups[p.id][0] += f
        groups[p.id][1] += 1
    return GuidePilot(cfg.rl.name, len(rollouts), len(texts), len(items), sum(flags),
                      _mean(outputs) if outputs else None, share_se([tuple(g) for g in groups.values()]),
                      paid or tuple(items))


def first_batches(cfg: Config, spec, model, tokenizer, problems: Sequence[Any], family: str,
                  batches: int) -> list[Any]:
    """RL's first `batches` rollouts sampled from `model` as RL samples them: its prompt iterator,
    seed, RNG stream per batch and sampler settings (call inside the model's mesh)."""
    import jax

    from exectune_jax.data.pipeline import rl_prompt_iterator
    from exectune_jax.train.rollouts import sample_rollout

    rl = cfg.rl
    it = rl_prompt_iterator(problems, rl.prompts_per_step, cfg.seed)
    rng = jax.random.key(cfg.seed)
    return [sample_rollout(model, tokenizer, next(it), family, spec, index=i, policy_step=0,
                           group_size=rl.group_size, max_new_tokens=rl.max_new_tokens,
                           temperature=rl.temperature, top_p=rl.top_p, rng=rng)
            for i in range(batches)]


def pilot_of_model(cfg: Config, spec, model, tokenizer, problems: Sequence[Any], mesh,
                   batches: int) -> GuidePilot:
    """The guide pilot of `model`, RL's start guide, against the run's call cache."""
    from exectune_jax import parallel
    from exectune_jax.api.cache import Cache

    family = _family(cfg)
    with parallel.use_mesh(mesh):
        rollouts = first_batches(cfg, spec, model, tokenizer, problems, family, batches)
    with Cache(layout.call_cache(cfg.run_dir)) as cache:
        return guide_pilot(cfg, family, spec, rollouts, cache.get)


def start_guide_pilot(cfg: Config, batches: int) -> GuidePilot | None:
    """The guide pilot of the config's RL stage when its start guide exists, else None."""
    from transformers import AutoTokenizer

    from exectune_jax import parallel
    from exectune_jax.data import tasks
    from exectune_jax.models import hf
    from exectune_jax.train import rewards
    from exectune_jax.train.grpo import DTYPES, prompts_that_fit, resolve_init

    try:
        init = resolve_init(cfg)
    except UserError:
        return None
    spec = rewards.make_spec(cfg.rl.preset, cfg.rl.weights)
    tokenizer = AutoTokenizer.from_pretrained(init)
    mesh = parallel.make_mesh(cfg.mesh)
    # as RL samples: the parameters cast to the compute dtype
    model, _ = hf.load(init, mesh=mesh, dtype=DTYPES[cfg.model.dtype], remat=cfg.model.remat)
    task = tasks.get(cfg.task.name, **cfg.task.options)
    problems = prompts_that_fit(task.problems("train"), tokenizer, task.family, spec, cfg)
    return pilot_of_model(cfg, spec, model, tokenizer, problems, mesh, batches)


def _family(cfg: Config) -> str:
    from exectune_jax.data import tasks

    return tasks.get(cfg.task.name, **cfg.task.options).family


def measures(pilot: Pilot | None) -> tuple[float, str, float, float, float]:
    """(token scale, stand-in strategy, output tokens of a guided core call, of a core-alone call,
    of a judge call): the pilot's, or the stated defaults."""
    if pilot is None:
        d = DEFAULT_OUTPUT_TOKENS
        return 1.0, DEFAULT_STRATEGY, d["core"], d["core"], d["judge"]
    return pilot.scale, pilot.strategy, pilot.core_output, pilot.alone_output, pilot.judge_output


def rl_lines(cfg: Config, name: str, preset: str, drawn: Sequence[Any], family: str,
             guide: GuidePilot | None, *, strategy: str, core_out: float, advice_out: float,
             judge_out: float, scale: float, repeat: float) -> list[Line]:
    """One RL stage's guided core calls and their follow checks: `drawn` problems (each once per
    group sample), priced from the guide pilot when there is one, else from the stand-in
    strategy at the stated repeat share (advice never repeats)."""
    rl = cfg.rl
    out = advice_out if preset == "advisor" else core_out
    if guide is None:
        return guided_lines(cfg, name, with_strategy(drawn, strategy), family, rl.group_size, out,
                            judge_out, scale, batchable=False,
                            replayed=0.0 if preset == "advisor" else repeat,
                            source="" if preset == "advisor" else f"stated {repeat:.0%}")
    calls = len(drawn) * rl.group_size * guide.executed_share  # 0 when the gate stops every text
    return guided_lines(cfg, name, guide.priced, family, calls / len(guide.priced) if guide.priced else 0.0,
                        out, judge_out, scale, batchable=False, replayed=guide.replayed_share,
                        source=f"guide pilot ({guide.sampled} texts)")


def core_only_line(cfg: Config, drawn: Sequence[Any], sampled: Sequence[Any], family: str,
                   alone_out: float, scale: float) -> Line:
    """RL's core-alone baseline: `rl.core_only_samples` calls on each distinct drawn problem, those
    acceptance sampling already sent replayed."""
    distinct = list({p.id: p for p in drawn}.values())
    line = core_line(cfg, "core_only", with_strategy(distinct, None), family, cfg.rl.core_only_samples,
                     alone_out, scale, batchable=False)
    replays = core_alone_replays(cfg, [p.id for p in distinct], [p.id for p in sampled])
    return replace(line, replayed=replays / line.calls if line.calls else 0.0,
                   source="sampling's core-alone calls" if replays else "")


def project(cfg: Config, pilot: Pilot | None, *, rl_stages: Sequence[tuple[str, str]] | None = None,
            unfiltered: bool = False, repeat: float = TRAINED_REPEAT,
            guides: Mapping[str, GuidePilot] | None = None) -> list[Line]:
    """Projected lines of every stage the config runs, in run order; `rl_stages`: (name, preset)
    of each RL stage, by default the config's one; `repeat`: the share of a trained guide's
    guided calls replayed from the cache where `guides` (RL stage name -> its guide pilot) has no
    measurement (module docstring)."""
    from exectune_jax.data import tasks
    from exectune_jax.train import rewards
    from exectune_jax.train.acceptance import training_problems

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
        lines += guided_lines(cfg, stage, with_strategy(train, strategy), family,
                              cfg.sample.proposals * cfg.sample.verify_samples, core_out, judge_out, scale,
                              batchable=True)
    if unfiltered:  # the same proposal prompts: replays of the filtered run's first round when it ran first
        lines.append(Line("sample_unfiltered", "teacher", teacher.model, teacher.provider, 0.0, 0.0, 0.0, 0.0, True))
    rl = cfg.rl
    drawn = [p for batch in rl_draws(cfg, task.problems("train"), rl.steps) for p in batch]
    baseline = False  # the first stage that measures the core alone pays; later ones replay it
    for name, preset in rl_stages:
        lines += rl_lines(cfg, name, preset, drawn, family, (guides or {}).get(name), strategy=strategy,
                          core_out=core_out, advice_out=advice_out, judge_out=judge_out, scale=scale,
                          repeat=repeat)
        if not baseline and rl.core_only_samples and rewards.make_spec(preset, rl.weights).uses_core_alone:
            lines.append(core_only_line(cfg, drawn, train, family, alone_out, scale))
            baseline = True
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
    lines.append(core_line(cfg, "eval", with_strategy(test, None), family, ev.samples, alone_out, scale,
                           batchable=True))
    # trained guides' strategies are executed (the first one's all paid, the later ones' repeating
    # it in part); advice and the base guide's text leave the core on its own
    executed = sum(name not in ev.advisor_methods and Path(path).name != BASE_GUIDE_DIR
                   for name, path in ev.guides.items())
    for guides_n, out, replayed in ((min(executed, 1), core_out, 0.0), (executed - 1, core_out, repeat),
                                    (len(ev.guides) - executed, advice_out, 0.0)):
        if guides_n > 0:
            lines += guided_lines(cfg, "eval", with_strategy(test, strategy), family, ev.samples * guides_n,
                                  out, judge_out, scale, batchable=True, replayed=replayed,
                                  source=f"stated {repeat:.0%}" if replayed else "")
    if ev.core_strong and cfg.api.core_strong is not None:
        lines.append(core_line(cfg, "eval", with_strategy(test, None), family, ev.samples, alone_out,
                               scale, endpoint="core_strong", batchable=True))
    return lines


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


def rl_start_forecast(cfg: Config, spec, model, tokenizer, problems: Sequence[Any], mesh) -> str:
    """What an RL stage starting now will pay, told before its first paid call: its guide pilot on
    the batches it draws before its first update (sampled again, so RL's own are untouched), output
    lengths from the run's acceptance sampling."""
    rl = cfg.rl
    guide = pilot_of_model(cfg, spec, model, tokenizer, problems, mesh, min(rl.steps, rl.forecast_batches))
    pilot = measured_pilot(cfg)
    family = _family(cfg)
    scale, strategy, core_out, alone_out, judge_out = measures(pilot)
    drawn = [p for batch in rl_draws(cfg, problems, rl.steps) for p in batch]
    lines = rl_lines(cfg, rl.name, rl.preset, drawn, family, guide, strategy=strategy,
                     core_out=core_out, advice_out=alone_out * ADVICE_LENGTHENS, judge_out=judge_out,
                     scale=scale, repeat=TRAINED_REPEAT)
    if spec.uses_core_alone and rl.core_only_samples:
        from exectune_jax.train.acceptance import training_problems

        lines.append(core_only_line(cfg, drawn, training_problems(cfg)[1], family, alone_out, scale))
    rows = stage_table(load_prices(cfg.api.prices), lines)
    return (f"{rl.name}: forecast before its first paid call ({guide.describe()}; output lengths "
            + ("from the run's acceptance sampling" if pilot else f"stated {DEFAULT_OUTPUT_TOKENS}")
            + "):\n" + format_table(rows, cfg))


def rl_stage_configs(cfg: Config, demo: bool) -> dict[str, Config]:
    """Each RL stage's config by name: the demo's two, or the config's one."""
    if not demo:
        return {cfg.rl.name: cfg}
    from exectune_jax.demo import stage_configs

    configs = stage_configs(cfg)
    return {name: configs[name] for name in ("advisor_rl", "rl")}


def run(cfg: Config, pilot: int = 8, demo: bool = False, quick: bool = False,
        repeat: float | None = None, rl_pilot: int | None = None, **_: Any) -> int:
    """`exectune estimate`: the table, budget warnings, and run_dir/estimate.json."""
    repeat = TRAINED_REPEAT if repeat is None else repeat
    rl_pilot = cfg.rl.forecast_batches if rl_pilot is None else rl_pilot
    if not 0.0 <= repeat < 1.0:
        raise UserError(f"--repeat {repeat}: a share of calls, at least 0 and below 1")
    if demo or quick:
        from exectune_jax.demo import prepare

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
                                       repeat=repeat, guides=guides))
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
