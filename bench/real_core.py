"""A real core on the arith validation split: the core alone and executing strategies.

    launch/local_core.sh &                       # SmolLM2-135M-Instruct behind llama.cpp's server
    python bench/real_core.py --out runs/real-core [--n 200] [--first 0] [--max-tokens 192]
        [--base-url http://127.0.0.1:8765/v1] [--model smollm2-135m-instruct]
        [--guide DIR] [--rows core_only,gold]

Rows: `core_only` (the core alone), `gold` (each problem's gold program as the teacher's atomic
steps, `sim/guide.gold_strategy`: the best strategy a guide could write) and, with --guide, a
trained guide's greedy strategies (`exectune_sft`). Each guided execution gets both follow
estimators: the trace checker (`gcop/trace.py`, no call) and the judge (`api.judge`, here the
embedded `sim-judge`, reading the real core's texts). Calls go through the project's pool, so
tokens are the server's `usage` and the ledger prices them (0/0 for `smollm2`).

With --judge-url the judge is the served model itself (a real judge: its replies meet the
verdict parser); the core calls already made replay from DIR's call cache.

Writes DIR/results.json (per row: accuracy, α by each estimator with its unknowns, tokens,
USD, wall seconds) and DIR/executions.jsonl (every execution's problem, strategy, reply,
extracted answer and verdicts, for reading and hand labels); the ledger and call cache are in
DIR too, so a rerun replays the calls it already made.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from exectune_jax.api import open_pool
from exectune_jax.config import load_config
from exectune_jax.data import tasks
from exectune_jax.evaluate import RowData, execute_row, guide_texts, row_summary
from exectune_jax.gcop.executability import wilson
from exectune_jax.sim import serving
from exectune_jax.sim.guide import gold_strategy


def alpha(outcomes, estimator: str) -> dict:
    """α by one estimator over the scored guided executions: yes / decided, unknowns counted."""
    verdicts = [c.verdict for o in outcomes if o.correct is not None for c in o.checks
                if c.estimator == estimator]
    yes, no = verdicts.count("yes"), verdicts.count("no")
    n = yes + no
    return {"value": yes / n if n else None, "ci": list(wilson(yes, n)) if n else None,
            "yes": yes, "no": no, "unknown": verdicts.count("unknown")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--first", type=int, default=0, help="skip the split's first problems")
    ap.add_argument("--max-tokens", type=int, default=192)
    ap.add_argument("--base-url", default="http://127.0.0.1:8765/v1")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--guide", default=None, help="a trained guide's HF dir: adds the exectune_sft row")
    ap.add_argument("--rows", default="core_only,gold")
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--judge-url", default=None,
                    help="the judge is the same served model at this URL instead of sim-judge")
    ap.add_argument("--tag", default="", help="suffix of the output files: results<tag>.json")
    args = ap.parse_args(argv)
    out = Path(args.out)
    cfg = load_config(None, [
        f"run_dir={out}", "api.core.provider=openai", f"api.core.base_url={args.base_url}",
        f"api.core.model={args.model}", "api.core.api_key_env=null",
        f"api.core.max_tokens={args.max_tokens}", "api.core.timeout_s=600",
        f"api.concurrency={args.concurrency}", "api.follow_check=judge", "api.max_retries=2",
        *([f"api.judge.base_url={args.judge_url}", f"api.judge.model={args.model}",
           "api.judge.timeout_s=600"] if args.judge_url else []),
    ])
    task = tasks.get(cfg.task.name, **cfg.task.options)
    problems = task.problems("validation")[args.first: args.first + args.n]
    rows = [r for r in args.rows.split(",") if r]
    if args.guide:
        rows.append("exectune_sft")
    out.mkdir(parents=True, exist_ok=True)
    doc = {"task": cfg.task.name, "split": "validation", "problems": len(problems),
           "core_model": args.model, "base_url": args.base_url, "max_tokens": args.max_tokens,
           "judge_model": cfg.api.judge.model, "rows": []}
    records = []
    with serving(cfg) as served, open_pool(served, out) as pool:
        for method in rows:
            start = time.monotonic()
            guide_tokens = 0
            if method == "core_only":
                texts = None
            elif method == "gold":
                texts = [gold_strategy(p) for p in problems]
            else:
                texts, guide_tokens = guide_texts(Path(args.guide), problems, task.family,
                                                  advisor=False, max_new_tokens=96, batch_size=32)
            outcomes = execute_row(pool, task, problems, texts, samples=1, stage=f"real_core.{method}",
                                   endpoint="core", model=args.model,
                                   judge_model=cfg.api.judge.model if texts is not None else None)
            wall = time.monotonic() - start
            row = row_summary(RowData(method, problems, texts, outcomes, guide_tokens, task.family), None)
            flat = [o for os_ in outcomes for o in os_]
            row["wall_s"] = round(wall, 1)
            row["cached_calls"] = sum(o.cached for o in flat)
            if texts is not None:
                row["alpha_by"] = {e: alpha(flat, e) for e in ("judge", "trace")}
            doc["rows"].append(row)
            for p, text, os_ in zip(problems, texts or [None] * len(problems), outcomes):
                o = os_[0]
                records.append({
                    "method": method, "id": p.id, "problem": p.prompt, "answer": p.answer,
                    "strategy": text, "response": o.response, "extracted": o.answer,
                    "correct": o.correct, "error": o.error, "input_tokens": o.input_tokens,
                    "output_tokens": o.output_tokens, "usd": o.usd,
                    "checks": {c.estimator: {"verdict": c.verdict, "reason": c.reason} for c in o.checks},
                })
            print(f"{method}: accuracy {row['accuracy']:.3f} over {row['n']}, failed {row['failed_calls']}, "
                  f"tokens in/out {row['core_input_tokens']}/{row['core_output_tokens']}, "
                  f"USD {row['usd_total']:.4f}, wall {wall:.0f}s"
                  + ("".join(f", α[{e}] {a['value'] if a['value'] is None else round(a['value'], 3)}"
                             f" (unknown {a['unknown']})" for e, a in row.get("alpha_by", {}).items())),
                  flush=True)
    (out / f"results{args.tag}.json").write_text(json.dumps(doc, indent=2) + "\n")
    with (out / f"executions{args.tag}.jsonl").open("w") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
