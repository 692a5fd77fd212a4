"""The simulator's ground truth of "followed", kept on the server side only.

When sim-core answers a prompt that carries a strategy, the server appends one JSON line
`{"digest", "model", "followed", "carried_out"}` to its truth log (carried_out: how many of the
strategy's operations the core carried out before it stopped), keyed by the exchange's digest
(prompt and reply, `gcop.follow.exchange_digest`). Nothing of it goes into the API response: a client (and
every estimator) sees only the texts. Tests and the demo's study read the log to measure how
well each estimator of "followed" agrees with what the simulated core really did.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from exectune_jax.gcop.follow import agreement, exchange_digest
from exectune_jax.io import read_jsonl


class TruthLog:
    """Append-only JSONL of ground-truth follow labels, safe across the server's threads."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def record(self, model: str, messages: Sequence[Mapping[str, str]], text: str, followed: bool,
               carried_out: int = 0) -> None:
        line = json.dumps({"digest": exchange_digest(messages, text), "model": model,
                           "followed": bool(followed), "carried_out": int(carried_out)})
        with self._lock, open(self.path, "a") as f:
            f.write(line + "\n")


def read_truth(path: str | Path) -> dict[str, bool]:
    """digest -> followed, from a truth log (a missing file is an empty log)."""
    path = Path(path)
    if not path.exists():
        return {}
    return {row["digest"]: bool(row["followed"]) for _, row in read_jsonl(path)}


def study(labels: Iterable[Mapping], truth: Mapping[str, bool]) -> dict:
    """Per estimator, agreement and Cohen's kappa of its verdicts with the ground truth; and per
    method (a row of the eval), the share of its executions the core really followed beside the
    share each estimator called followed (of those it decided).

    `labels` are rows `{"method", "digest", "checks": {estimator: verdict}}`; rows the truth log
    does not know (a real core, or a log that was not kept) are counted as `unmatched` and left
    out.
    """
    pairs: dict[str, list[tuple[str, bool]]] = {}
    methods: dict[str, dict[str, list[tuple[str, bool]]]] = {}
    unmatched = 0
    for row in labels:
        if row["digest"] not in truth:
            unmatched += 1
            continue
        followed = truth[row["digest"]]
        for estimator, verdict in row["checks"].items():
            pairs.setdefault(estimator, []).append((verdict, followed))
            methods.setdefault(row.get("method", "?"), {}).setdefault(estimator, []).append((verdict, followed))
    return {"unmatched": unmatched,
            "estimators": {name: agreement(p) for name, p in sorted(pairs.items())},
            "methods": {method: _shares(by) for method, by in methods.items()}}


def _shares(by_estimator: Mapping[str, list[tuple[str, bool]]]) -> dict:
    """One method's executions: how many, the share truly followed, and each estimator's share
    of "yes" among its decided verdicts (None when it decided none)."""
    any_pairs = next(iter(by_estimator.values()))
    decided = {name: [v for v, _ in p if v != "unknown"] for name, p in by_estimator.items()}
    return {"n": len(any_pairs), "followed": sum(t for _, t in any_pairs) / len(any_pairs),
            "said_followed": {name: (v.count("yes") / len(v) if v else None) for name, v in decided.items()}}
