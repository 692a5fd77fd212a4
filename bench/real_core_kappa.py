"""Each follow estimator against the hand labels of real executions: agreement and Cohen's κ.

    python bench/real_core_kappa.py [--labels tests/data/real_core_labels.jsonl]

The labels are 100 executions of SmolLM2-135M-Instruct (behind llama.cpp) on gold atomic
strategies, each read and labelled `followed: yes|no` with a reason (docs/real-apis.md). Rows:

- `trace`: the trace checker (`gcop/trace.py`) on the recorded texts, as the code is now;
- `sim-judge`: the embedded judge's `decide` on the recorded texts, as the code is now;
- `trace (as run)`, `sim-judge (as run)`: the verdicts the run itself recorded, before the
  step-line reader read numbered lines;
- `smollm2 judge`: the served model itself as the judge, its recorded replies parsed by
  `gcop/follow.parse_judge_reply` as the code is now (an unparseable reply is unknown).

`unknown` verdicts are left out of agreement and κ and counted (gcop/follow.agreement).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from exectune_jax.gcop import trace
from exectune_jax.gcop.follow import agreement, parse_judge_reply
from exectune_jax.sim.judge import decide

LABELS = Path(__file__).resolve().parents[1] / "tests/data/real_core_labels.jsonl"


def verdicts(record: dict) -> dict[str, str]:
    """Every estimator's verdict on one labelled execution."""
    out = {
        "trace": trace.check(record["strategy"], record["response"])[0],
        "sim-judge": "yes" if decide(record["problem"], record["strategy"], record["response"])[0] else "no",
    }
    for name, verdict in record.get("as_run", {}).items():
        out[f"{name} (as run)"] = verdict
    for model, reply in record.get("judge_replies", {}).items():
        parsed = parse_judge_reply(reply)
        out[f"{model} judge"] = parsed[0] if parsed else "unknown"
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labels", default=str(LABELS))
    args = ap.parse_args(argv)
    records = [json.loads(line) for line in Path(args.labels).read_text().splitlines() if line.strip()]
    pairs: dict[str, list[tuple[str, bool]]] = {}
    for r in records:
        for name, verdict in verdicts(r).items():
            pairs.setdefault(name, []).append((verdict, r["followed"] == "yes"))
    yes = sum(r["followed"] == "yes" for r in records)
    print(f"{len(records)} hand labels: {yes} followed, {len(records) - yes} not")
    print(f"{'estimator':<32} {'decided':>7} {'unknown':>7} {'agreement':>9} {'kappa':>6}  yes/yes yes/no no/yes no/no")
    for name, p in pairs.items():
        a = agreement(p)
        c = a["confusion"]
        agree = "–" if a["agreement"] is None else f"{a['agreement']:.3f}"
        kappa = "–" if a["kappa"] is None else f"{a['kappa']:.3f}"
        print(f"{name:<32} {a['decided']:>7} {a['unknown']:>7} {agree:>9} {kappa:>6}  "
              f"{c['yes_true']:>7} {c['yes_false']:>6} {c['no_true']:>6} {c['no_false']:>5}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
