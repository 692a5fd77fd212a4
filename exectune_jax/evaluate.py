"""The method table (`exectune eval`): every guide, and the core alone, on the same problems,
once for each core of `eval.cores` (each guide's strategies are written once and executed by every
core: does a guide trained for one core transfer to another?).

Each guide row samples one strategy per problem from its guide (greedy), the core executes it,
and the row reports accuracy and executability α (how often the core followed the strategy, by
the follow check) with 95% Wilson intervals, the mixture accuracy = α·P(correct | followed) +
(1 − α)·P(correct | not followed), how often the guide wrote a well-formed, non-leaking
strategy, what the core spent, what measuring α spent, a paired exact McNemar test of
ExecTune against the row on the same problems, and the utility J = accuracy − λ·USD per problem
at each λ of `eval.lambdas` (utility.py). Failed API calls and undecided follow checks are
never scored: they are excluded and counted.

results.json's `rows` are the first core's table, beside the bigger core alone (api.core_strong);
`cores` holds each other core's table, keyed by its endpoint's name. results.json holds no
timings and no absolute paths, so the same seed gives the same file whether or not the API
misbehaved along the way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from exectune_jax import break_even, plots, preflight, resume, utility
from exectune_jax.api import open_pool
from exectune_jax.config import Config
from exectune_jax.data import tasks
from exectune_jax.data.tasks import Problem
from exectune_jax.errors import UserError
from exectune_jax.gcop import prompts, strategy
from exectune_jax.gcop.execute import Outcome, execute_many, priced
from exectune_jax.gcop.executability import mixture, wilson
from exectune_jax.gcop.follow import exchange_digest
from exectune_jax.io import write_json_atomic, write_jsonl_atomic, write_text_atomic
from exectune_jax.train.metrics import read_metrics
from exectune_jax.world import summary_of

REFERENCE = "exectune"
ROW_ORDER = ("core_only", "base_guide", "sft_unfiltered", "exectune_sft", "advisor_rl",
             "exectune", "core_strong")
ROW_FIELDS = ("method", "n", "accuracy", "accuracy_ci", "executability", "executability_ci",
              "format_valid", "leak_rate", "core_input_tokens", "core_output_tokens", "usd_total",
              "usd_per_problem", "guide_tokens", "failed_calls", "mcnemar_p_vs_exectune",
              "p_correct_followed", "p_correct_followed_ci", "p_correct_not_followed",
              "p_correct_not_followed_ci", "mixture_accuracy", "follow_unknown",
              "follow_usd_per_problem", "discordant_vs_exectune", "utility")
FOLLOW_LABELS = "follow_labels.jsonl"


# ---------------------------------------------------------------------------------------------
# Statistics (pure)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pair counts b and c.

    Under H0 each discordant pair is a fair coin, so p = 2 * P(Binom(b+c, 1/2) <= min(b, c)),
    capped at 1. Computed with integers, so it is exact for any n.
    """
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def discordant(ref: Mapping[str, bool], other: Mapping[str, bool]) -> tuple[int, int]:
    """(ref right & other wrong, ref wrong & other right) over problems scored in both."""
    shared = ref.keys() & other.keys()
    b = sum(ref[i] and not other[i] for i in shared)
    c = sum(other[i] and not ref[i] for i in shared)
    return b, c


# ---------------------------------------------------------------------------------------------
# One row


@dataclass(frozen=True)
class RowData:
    """Everything measured for one method: per problem, the guide text and the core outcomes."""

    method: str
    problems: Sequence[Problem]
    texts: Sequence[str | None] | None  # guide outputs; None for a core-alone row
    outcomes: Sequence[Sequence[Outcome]]  # per problem, eval.samples executions
    guide_tokens: int
    family: str

    def first_correct(self) -> dict[str, bool]:
        """Problem id -> correctness of the first execution, for problems whose call succeeded."""
        return {p.id: o[0].correct for p, o in zip(self.problems, self.outcomes)
                if o[0].correct is not None}


def ci(k: int, n: int) -> list[float]:
    return list(wilson(k, n)) if n else [0.0, 1.0]


def row_summary(data: RowData, ref: Mapping[str, bool] | None, lambdas: Sequence[float] = (),
                guide_usd_per_mtok: float = 0.0) -> dict:
    """The row's numbers; `ref` is the reference row's first_correct (None: no test).

    accuracy is pass@1 (each problem's first execution), so rows pair up for McNemar;
    executability is α, the guide-averaged e(x, s) of the paper over all `eval.samples`
    executions of each problem's strategy, and the mixture terms are averaged the same way
    (mixture_accuracy is their composition, over the executions the follow check decided).
    usd_per_problem is the core's, per scored execution; follow_usd_per_problem is what the
    follow check (the judge) cost on top, per scored execution; guide_tokens counts what the
    guide generated (self-hosted, so not priced); utility is J at each of `lambdas`, the guide's
    tokens priced at `guide_usd_per_mtok`.
    """
    first = data.first_correct()
    n, k = len(first), sum(first.values())
    flat = [o for os_ in data.outcomes for o in os_]
    scored = [o for o in flat if o.correct is not None]
    usd = sum(o.usd for o in flat)
    row = {
        "method": data.method,
        "n": n,
        "accuracy": k / n if n else 0.0,
        "accuracy_ci": ci(k, n),
        "executability": None,
        "executability_ci": None,
        "format_valid": None,
        "leak_rate": None,
        "core_input_tokens": sum(o.input_tokens for o in flat),
        "core_output_tokens": sum(o.output_tokens for o in flat),
        "usd_total": usd,
        "usd_per_problem": usd / len(scored) if scored else 0.0,
        "guide_tokens": data.guide_tokens,
        "failed_calls": len(flat) - len(scored),
        "mcnemar_p_vs_exectune": None,
        **{k: None for k in ROW_FIELDS[ROW_FIELDS.index("p_correct_followed"):]},
    }
    if data.texts is not None:
        mix = mixture({p.id: o for p, o in zip(data.problems, data.outcomes)})
        row.update({
            "executability": mix["alpha"]["value"], "executability_ci": mix["alpha"]["ci"],
            "p_correct_followed": mix["p_correct_followed"]["value"],
            "p_correct_followed_ci": mix["p_correct_followed"]["ci"],
            "p_correct_not_followed": mix["p_correct_not_followed"]["value"],
            "p_correct_not_followed_ci": mix["p_correct_not_followed"]["ci"],
            "mixture_accuracy": mix["accuracy"], "follow_unknown": mix["unknown"],
            "follow_usd_per_problem": sum(o.follow_usd for o in scored) / len(scored) if scored else 0.0,
        })
        texts = [t or "" for t in data.texts]
        row["format_valid"] = sum(strategy.parse(t).ok for t in texts) / len(texts)
        row["leak_rate"] = sum(strategy.leaks(t, p, data.family) is not None
                               for t, p in zip(texts, data.problems)) / len(texts)
    if ref is not None and data.method != REFERENCE:
        pairs = discordant(ref, first)
        row["mcnemar_p_vs_exectune"] = mcnemar_exact(*pairs)
        row["discordant_vs_exectune"] = list(pairs)  # (exectune right, this row right): pooled by a study
    row["utility"] = utility.row_utilities(row, lambdas, guide_usd_per_mtok)
    return row


def table(rows: Sequence[Mapping]) -> str:
    """results.md: one markdown table, percentages with intervals, cost in USD."""

    def pct(v, interval):
        if v is None:
            return "–"
        return f"{100 * v:.1f} [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"

    def opt(v, f):
        return "–" if v is None else f(v)

    head = ("| method | n | accuracy % [95% CI] | executability α % [95% CI] | "
            "P(correct given followed) % | P(correct given not followed) % | format valid % | "
            "leak % | core tokens in/out | USD total | USD / problem | follow check USD / problem | "
            "guide tokens | failed calls | McNemar p vs exectune |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        lines.append("| " + " | ".join([
            r["method"], str(r["n"]), pct(r["accuracy"], r["accuracy_ci"]),
            pct(r["executability"], r["executability_ci"]),
            pct(r["p_correct_followed"], r["p_correct_followed_ci"]),
            pct(r["p_correct_not_followed"], r["p_correct_not_followed_ci"]),
            opt(r["format_valid"], lambda v: f"{100 * v:.1f}"),
            opt(r["leak_rate"], lambda v: f"{100 * v:.1f}"),
            f"{r['core_input_tokens']}/{r['core_output_tokens']}",
            f"{r['usd_total']:.4f}", f"{r['usd_per_problem']:.6f}",
            opt(r["follow_usd_per_problem"], lambda v: f"{v:.6f}"), str(r["guide_tokens"]),
            str(r["failed_calls"]), opt(r["mcnemar_p_vs_exectune"], lambda v: f"{v:.3g}"),
        ]) + " |")
    mixed = [mixture_line(r) for r in rows if r["executability"] is not None]
    if mixed:
        lines += ["", "accuracy = α·P(correct | followed) + (1 − α)·P(correct | not followed), "
                  "on the executions the follow check decided:", ""]
        lines += [f"- {m}" for m in mixed]
    return "\n".join(lines) + "\n"


def utility_section(rows: Sequence[Mapping], spec: Mapping) -> str:
    """The J table under the method table, with its definition and the guide's price."""
    if not spec["lambdas"]:
        return ""
    return (f"\nUtility {spec['definition']}, guide tokens at USD {spec['guide_usd_per_mtok']:g} per "
            "million; J in accuracy points, the best row at each λ in bold:\n\n"
            + utility.table(rows, spec["lambdas"]))


def markdown(doc: Mapping) -> str:
    """results.md: the method table and J at each λ, for the first core and then for each other."""
    text = table(doc["rows"]) + utility_section(doc["rows"], doc["utility"])
    for core, part in doc.get("cores", {}).items():
        text += (f"\n## The guides executed by {core} ({part['model']})\n\n" + table(part["rows"])
                 + utility_section(part["rows"], doc["utility"]))
    return text


def mixture_line(r: Mapping) -> str:
    """One row's mixture identity in numbers."""
    a, pf, pn = r["executability"], r["p_correct_followed"], r["p_correct_not_followed"]
    terms = " + ".join(t for t in (
        f"{a:.3f} × {pf:.3f}" if pf is not None else "",
        f"{1 - a:.3f} × {pn:.3f}" if pn is not None else "") if t)
    unknown = f" ({r['follow_unknown']} undecided left out)" if r["follow_unknown"] else ""
    return f"{r['method']}: {r['mixture_accuracy']:.3f} = {terms or '0'}{unknown}"


# ---------------------------------------------------------------------------------------------
# Producing the rows (side effects: guide inference, core calls)


def guide_texts(guide_dir: Path, problems: Sequence[Problem], family: str, *, advisor: bool,
                max_new_tokens: int, batch_size: int) -> tuple[list[str], int]:
    """Greedy guide output per problem, and the number of tokens the guide generated."""
    from transformers import AutoTokenizer

    # local import: JAX loads only where guides sample; the demo's and the study's parent
    # processes import this module for its tables and statistics, and never sample
    from exectune_jax.data.pipeline import encode_prompt
    from exectune_jax.models import hf, sampler

    model, _ = hf.load(guide_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(guide_dir))
    make = prompts.advisor_messages if advisor else prompts.guide_messages
    ids = [encode_prompt(tokenizer, make(p, family)) for p in problems]
    stops = () if advisor else (strategy.CLOSE,)
    texts, generated = [], 0
    for start in range(0, len(ids), batch_size):
        out = sampler.generate(model, ids[start:start + batch_size],
                               max_new_tokens=max_new_tokens, temperature=0.0,
                               stop_strings=stops, tokenizer=tokenizer)
        texts += [t.strip() for t in out.texts]
        generated += int(out.lengths.sum())
    return texts, generated


def execute_row(pool, task, problems: Sequence[Problem], texts: Sequence[str | None] | None, *,
                samples: int, stage: str, endpoint: str, model: str,
                judge_model: str | None = None) -> list[list[Outcome]]:
    """`samples` core executions per problem (sample indices 0..samples-1), grouped per problem."""
    given = texts if texts is not None else [None] * len(problems)
    items = [(p, t or None) for p, t in zip(problems, given) for _ in range(samples)]
    indices = [i for _ in problems for i in range(samples)]
    flat = priced(execute_many(pool, task, items, stage=stage, sample_index=indices,
                               endpoint=endpoint), pool.ledger.prices, model, judge_model)
    if texts is not None:  # a guide that wrote nothing gave the core nothing to follow
        flat = [replace(o, followed="no", follow_reason="the guide wrote no strategy")
                if strategy is None and o.correct is not None else o
                for o, (_, strategy) in zip(flat, items)]
    return [flat[i * samples:(i + 1) * samples] for i in range(len(problems))]


def guide_dirs(cfg: Config) -> tuple[dict[str, Path], list[dict]]:
    """method -> existing guide dir (in ROW_ORDER, then any extra methods), and skip notes."""
    found, skipped = {}, []
    names = [m for m in ROW_ORDER if m in cfg.eval.guides]
    names += sorted(m for m in cfg.eval.guides if m not in ROW_ORDER)
    for method in names:
        given = cfg.eval.guides[method]
        if not given:
            continue
        path = Path(given) if Path(given).is_absolute() else Path(cfg.run_dir) / given
        if (path / "config.json").exists():
            found[method] = path
        else:
            skipped.append({"method": method, "reason": f"no guide at {given}"})
    return found, skipped


def collect(cfg: Config, pool, task, problems: Sequence[Problem]) -> tuple[dict[str, list[RowData]], list]:
    """Every core's rows, in table order: the core alone, then the guides (each guide's strategies
    written once, executed by each core of eval.cores); the bigger core alone closes the first
    core's table."""
    ev = cfg.eval
    guides, skipped = guide_dirs(cfg)
    written = {method: guide_texts(path, problems, task.family, advisor=method in ev.advisor_methods,
                                   max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size)
               for method, path in guides.items()}
    judge_model = cfg.api.judge.model if cfg.api.judge else None
    tables = {}
    for k, core in enumerate(ev.cores):
        model = getattr(cfg.api, core).model
        stage = "eval" if k == 0 else f"eval.{core}"  # the first core's stages keep the names of a one-core eval
        alone = execute_row(pool, task, problems, None, samples=ev.samples, stage=f"{stage}.core_only",
                            endpoint=core, model=model)
        rows = [RowData("core_only", problems, None, alone, 0, task.family)]
        for method, (texts, n_tokens) in written.items():
            outcomes = execute_row(pool, task, problems, texts, samples=ev.samples, stage=f"{stage}.{method}",
                                   endpoint=core, model=model, judge_model=judge_model)
            rows.append(RowData(method, problems, texts, outcomes, n_tokens, task.family))
        tables[core] = rows
    if ev.core_strong:
        if cfg.api.core_strong is None:
            skipped.append({"method": "core_strong", "reason": "api.core_strong is not set"})
        else:
            outcomes = execute_row(pool, task, problems, None, samples=ev.samples, stage="eval.core_strong",
                                   endpoint="core_strong", model=cfg.api.core_strong.model)
            tables[ev.cores[0]].append(RowData("core_strong", problems, None, outcomes, 0, task.family))
    return tables, skipped


def summaries(cfg: Config, rows: Sequence[RowData]) -> tuple[str | None, list[dict]]:
    """One table's reference method (None: no exectune row) and row summaries."""
    ref = next((r.first_correct() for r in rows if r.method == REFERENCE), None)
    return (REFERENCE if ref is not None else None,
            [row_summary(r, ref, cfg.eval.lambdas, cfg.eval.guide_usd_per_mtok) for r in rows])


def results(cfg: Config, tables: Mapping[str, Sequence[RowData]], skipped: list, n_problems: int) -> dict:
    """The results.json document: deterministic given the config (no times, no paths)."""
    first, *others = cfg.eval.cores
    reference, rows = summaries(cfg, tables.get(first, []))
    cores = {}
    for core in others:
        ref_other, rows_other = summaries(cfg, tables.get(core, []))
        cores[core] = {"model": getattr(cfg.api, core).model, "reference": ref_other, "rows": rows_other}
    return {
        "task": cfg.task.name,
        "split": cfg.eval.split,
        "problems": n_problems,
        "samples_per_problem": cfg.eval.samples,
        "core": first,
        "core_model": getattr(cfg.api, first).model,
        "world": summary_of(cfg.sim.world),  # the sim world's version, hash and overrides
        "follow_check": cfg.api.follow_check,
        "judge_model": cfg.api.judge.model if cfg.api.judge and cfg.api.follow_check == "judge" else None,
        "reference": reference,
        "utility": {"definition": utility.DEFINITION, "lambdas": list(cfg.eval.lambdas),
                    "guide_usd_per_mtok": cfg.eval.guide_usd_per_mtok},
        "rows": rows,
        "cores": cores,
        "skipped": skipped,
    }


def follow_labels(rows: Sequence[RowData]) -> list[dict]:
    """Every guided execution's follow verdicts, by estimator, keyed by the exchange's digest
    (for a study that holds reference labels, such as the simulator's ground truth)."""
    out = []
    for r in rows:
        if r.texts is None:
            continue
        for p, text, outcomes in zip(r.problems, r.texts, r.outcomes):
            messages = prompts.core_messages(p, r.family, text or None)
            for k, o in enumerate(outcomes):
                if o.response is None or not o.checks:
                    continue
                out.append({"method": r.method, "id": p.id, "sample": k,
                            "digest": exchange_digest(messages, o.response),
                            "followed": o.followed,
                            "checks": {c.estimator: c.verdict for c in o.checks}})
    return out


def rl_metrics(cfg: Config) -> dict[str, list[dict]]:
    """metrics.jsonl of the RL runs whose guides are in the table (their stage directories)."""
    guides, _ = guide_dirs(cfg)
    runs = {}
    for method in ("advisor_rl", "exectune"):
        if method in guides:
            records = read_metrics(guides[method].parent)
            if records:
                runs[method] = records
    return runs


def write_outputs(out: Path, doc: Mapping, runs: Mapping[str, list[dict]],
                  labels: Sequence[Mapping] = ()) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "results.json", doc)
    write_text_atomic(out / "results.md", markdown(doc))
    write_jsonl_atomic(out / FOLLOW_LABELS, labels)
    figures = [plots.accuracy_vs_cost(doc["rows"], out / "accuracy_vs_cost.png"),
               plots.accuracy_vs_alpha(doc["rows"], out / "accuracy_vs_alpha.png")]
    if runs:
        figures.append(plots.rl_curves(runs, out / "rl_curves.png"))
    return [f for f in figures if f is not None]


def run(cfg: Config) -> int:
    preflight.check(cfg, "eval")
    task = tasks.for_run(cfg.task.name, cfg.task.options, cfg.run_dir)
    problems = task.problems(cfg.eval.split)
    if cfg.eval.n_problems is not None:
        problems = problems[: cfg.eval.n_problems]
    out = Path(cfg.run_dir) / cfg.eval.out
    resume.record(cfg, out)
    with open_pool(cfg, cfg.run_dir, batch=True) as pool:
        tables, skipped = collect(cfg, pool, task, problems)
        pool.raise_if_stopped()
    doc = results(cfg, tables, skipped, len(problems))
    named = [(r["method"], r) for r in doc["rows"]] + [
        (f"{core}: {r['method']}", r) for core, part in doc["cores"].items() for r in part["rows"]]
    empty = [name for name, r in named if r["n"] == 0]
    if empty:
        raise UserError(f"eval: no execution was scored for {', '.join(empty)} (every call "
                        f"failed or none was made); nothing written to {out}. Check the "
                        "endpoints and run the same command again")
    write_outputs(out, doc, rl_metrics(cfg), follow_labels(tables[cfg.eval.cores[0]]))
    break_even.write(cfg, out, doc)
    for note in skipped:
        print(f"skipped {note['method']}: {note['reason']}")
    print(markdown(doc), end="")
    if (out / "break_even.md").exists():
        print((out / "break_even.md").read_text(), end="")
    print(f"written to {out}")
    return 0
