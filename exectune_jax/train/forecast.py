"""RL's forecast: what an RL stage will pay, told before its first paid call.

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
  Without a start guide, and for the later trained guides at eval, the share is a stated one
  (`cost.TRAINED_REPEAT`).

Output lengths come from the run's acceptance sampling (its ledger rows, or the estimate's kept
pilot). The `estimate` command projects its RL stages with the same lines.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jax

from exectune_jax import layout, parallel
from exectune_jax.api.cache import Cache, cache_key
from exectune_jax.api.ledger import load_prices
from exectune_jax.api.pool import normalize_messages
from exectune_jax.config import Config
from exectune_jax.cost import (ADVICE_LENGTHENS, DEFAULT_OUTPUT_TOKENS, TRAINED_REPEAT, Line, Pilot,
                               core_line, format_table, guided_lines, mean, measures, pilot_from_rows,
                               stage_table, with_strategy)
from exectune_jax.data import tasks
from exectune_jax.data.pipeline import rl_prompt_iterator
from exectune_jax.gcop import strategy
from exectune_jax.gcop.execute import requests_for
from exectune_jax.io import read_jsonl
from exectune_jax.train.acceptance import training_problems
from exectune_jax.train.dynamic_sampling import ReplacementStream
from exectune_jax.train.rollouts import sample_rollout


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


# ---------------------------------------------------------------------------------------------
# What the run has measured


def ledger_rows(path: Path) -> list[dict]:
    """The ledger's complete rows (a stage running beside may be appending one)."""
    return [row for _, row in read_jsonl(path)] if path.exists() else []


def measured_pilot(cfg: Config) -> Pilot | None:
    """The measurement of a run_dir where a pilot cannot run: its acceptance sampling, read from
    its ledger once the stage has finished (its summary written), else its kept pilot; None
    when it has neither."""
    if layout.sample_summary(cfg.run_dir, cfg.sample.out).exists():
        task, problems = training_problems(cfg)
        rows = [r for r in ledger_rows(layout.ledger(cfg.run_dir))
                if r["stage"].startswith(f"{cfg.sample.out}.")]
        accepted = layout.accepted(cfg.run_dir, cfg.sample.out)
        first = next(read_jsonl(accepted, appended=False), None) if accepted.exists() else None
        return pilot_from_rows(cfg, task.family, problems, rows, first[1]["completion"] if first else None)
    kept = layout.estimate_pilot(cfg.run_dir)
    return Pilot(**json.loads(kept.read_text())["pilot"]) if kept.exists() else None


# ---------------------------------------------------------------------------------------------
# The problems RL draws, the core-alone calls it replays, the guide pilot


def rl_draws(cfg: Config, problems: Sequence[Any], batches: int) -> list[list[Any]]:
    """The problems of RL's first `batches` steps, in order: its own prompt iterator and seed."""
    it = rl_prompt_iterator(problems, cfg.rl.prompts_per_step, cfg.seed)
    return [next(it) for _ in range(batches)]


def rl_worst_case(cfg: Config, problems: Sequence[Any], batches: int) -> list[Any]:
    """Every problem RL's first `batches` steps may execute: each batch, and with dynamic
    sampling the `rl.max_extra_groups` problems its replacement stream would draw next, as if
    every group lacked spread (how many it draws depends on outcomes not known before the run,
    so a forecast that is to bound the spend counts the cap)."""
    stream = ReplacementStream(problems, cfg.seed)
    drawn: list[Any] = []
    for batch in rl_draws(cfg, problems, batches):
        drawn += batch
        if cfg.rl.max_extra_groups:
            drawn += stream.draw(cfg.rl.max_extra_groups, {p.id for p in batch})
    return drawn


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
    ep = cfg.api.core
    return [cache_key(ep.provider, ep.model, normalize_messages(r.messages), max_tokens=ep.max_tokens,
                      temperature=ep.temperature, sample_index=r.sample_index)
            for r in requests_for(family, items, stage=cfg.rl.name)]


def guide_pilot(cfg: Config, family: str, spec, rollouts: Sequence[Any],
                cached: Callable[[str], Any]) -> GuidePilot:
    """Which core requests RL would pay for on `rollouts`: the texts the format gate lets through
    (as `label_rollout` does), less those `cached` (key -> the cached reply, or None) or an
    earlier request of the pilot answers."""
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
                      mean(outputs) if outputs else None, share_se([tuple(g) for g in groups.values()]),
                      paid or tuple(items))


def first_batches(cfg: Config, spec, model, tokenizer, problems: Sequence[Any], family: str,
                  batches: int) -> list[Any]:
    """RL's first `batches` rollouts sampled from `model` as RL samples them: its prompt iterator,
    seed, RNG stream per batch and sampler settings (call inside the model's mesh)."""
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
    family = _family(cfg)
    with parallel.use_mesh(mesh):
        rollouts = first_batches(cfg, spec, model, tokenizer, problems, family, batches)
    with Cache(layout.call_cache(cfg.run_dir)) as cache:
        return guide_pilot(cfg, family, spec, rollouts, cache.get)


def _family(cfg: Config) -> str:
    return tasks.get(cfg.task.name, **cfg.task.options).family


# ---------------------------------------------------------------------------------------------
# RL's lines and the forecast


def rl_lines(cfg: Config, name: str, preset: str, drawn: Sequence[Any], family: str,
             guide: GuidePilot | None, *, strategy: str, core_out: float, advice_out: float,
             judge_out: float, scale: float, repeat: float, endpoint: str = "core") -> list[Line]:
    """One RL stage's guided core calls and their follow checks: `drawn` problems (each once per
    group sample), priced from the guide pilot when there is one, else from the stand-in
    strategy at the stated repeat share (advice never repeats); `endpoint`: the api endpoint
    that is this stage's core (the demo's rl_next trains against core_next)."""
    rl = cfg.rl
    out = advice_out if preset == "advisor" else core_out
    if guide is None:
        return guided_lines(cfg, name, with_strategy(drawn, strategy), family, rl.group_size, out,
                            judge_out, scale, batchable=False,
                            replayed=0.0 if preset == "advisor" else repeat,
                            source="" if preset == "advisor" else f"stated {repeat:.0%}", endpoint=endpoint)
    calls = len(drawn) * rl.group_size * guide.executed_share  # 0 when the gate stops every text
    return guided_lines(cfg, name, guide.priced, family, calls / len(guide.priced) if guide.priced else 0.0,
                        out, judge_out, scale, batchable=False, replayed=guide.replayed_share,
                        source=f"guide pilot ({guide.sampled} texts)", endpoint=endpoint)


def core_only_line(cfg: Config, drawn: Sequence[Any], sampled: Sequence[Any], family: str,
                   alone_out: float, scale: float, endpoint: str = "core") -> Line:
    """RL's core-alone baseline: `rl.core_only_samples` calls on each distinct drawn problem, those
    acceptance sampling already sent replayed; with another `endpoint` (a stage that trains
    against it) that core's own calls, under `core_only.<endpoint>`, none of them sampling's."""
    distinct = list({p.id: p for p in drawn}.values())
    stage = "core_only" if endpoint == "core" else f"core_only.{endpoint}"
    line = core_line(cfg, stage, with_strategy(distinct, None), family, cfg.rl.core_only_samples,
                     alone_out, scale, batchable=False, endpoint=endpoint)
    replays = (core_alone_replays(cfg, [p.id for p in distinct], [p.id for p in sampled])
               if endpoint == "core" else 0)
    return replace(line, replayed=replays / line.calls if line.calls else 0.0,
                   source="sampling's core-alone calls" if replays else "")


def rl_start_forecast(cfg: Config, spec, model, tokenizer, problems: Sequence[Any], mesh) -> str:
    """What an RL stage starting now will pay, told before its first paid call: its guide pilot on
    the batches it draws before its first update (sampled again, so RL's own are untouched), output
    lengths from the run's acceptance sampling."""
    rl = cfg.rl
    guide = pilot_of_model(cfg, spec, model, tokenizer, problems, mesh, min(rl.steps, rl.forecast_batches))
    pilot = measured_pilot(cfg)
    family = _family(cfg)
    scale, strategy, core_out, alone_out, judge_out = measures(pilot)
    drawn = rl_worst_case(cfg, problems, rl.steps)
    lines = rl_lines(cfg, rl.name, rl.preset, drawn, family, guide, strategy=strategy,
                     core_out=core_out, advice_out=alone_out * ADVICE_LENGTHENS, judge_out=judge_out,
                     scale=scale, repeat=TRAINED_REPEAT)
    if spec.uses_core_alone and rl.core_only_samples:
        lines.append(core_only_line(cfg, drawn, training_problems(cfg)[1], family, alone_out, scale))
    rows = stage_table(load_prices(cfg.api.prices), lines)
    return (f"{rl.name}: forecast before its first paid call ({guide.describe()}; output lengths "
            + ("from the run's acceptance sampling" if pilot else f"stated {DEFAULT_OUTPUT_TOKENS}")
            + "):\n" + format_table(rows, cfg))
