"""The follow check: did the core carry out the strategy it was given? yes / no / unknown.

Two estimators read the texts of one guided execution:

- `judge`: a judge model (`api.judge`, any provider, through the pool: cached, retried,
  ledgered under `<stage>.judge`) reads problem, strategy and response and answers in a fixed
  two-line form (`followed: yes|no`, `reason: ...`). A failed call or an unparseable reply is
  `unknown`: excluded from every rate and counted, never scored.
- `trace`: math only, no extra call; the core writes one line per step and `gcop/trace.py`
  checks them against the strategy.

`api.follow_check` names the estimator whose verdict is the Outcome's `followed` (the one α is
measured with); the other verdicts ride along in `Outcome.checks`, so a study can compare them.
This module also holds what such a study needs: the digest one exchange is known by, and
agreement with Cohen's kappa against reference labels.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

VERDICTS = ("yes", "no", "unknown")
ESTIMATORS = ("judge", "trace")
# `followed: yes|no` (markdown bold allowed), then optionally `reason: ...`. A verdict line that
# names both answers ("followed: yes or no", a small model echoing the instruction) is no verdict.
_REPLY = re.compile(
    r"^\s*[*_]*followed[*_]*\s*:\s*[*_]*\s*(yes|no)\b(?![^\n]*\b(?:yes|no)\b)[^\n]*"
    r"(?:\n\s*[*_]*reason[*_]*\s*:\s*[*_]*\s*(.*))?", re.IGNORECASE)


@dataclass(frozen=True)
class FollowCheck:
    """One estimator's verdict on one execution; tokens and USD are the judge call's (0 for trace)."""

    estimator: str
    verdict: str  # yes | no | unknown
    reason: str
    input_tokens: int = 0
    output_tokens: int = 0
    usd: float = 0.0
    error: str | None = None  # the judge call's error kind when it failed


def parse_judge_reply(text: str | None) -> tuple[str, str] | None:
    """(verdict, reason) from a judge reply in the fixed form, or None when it is not in it
    (SmolLM2-135M as a judge carries out the strategy itself instead: every reply is None,
    tests/data/real_core_replies.jsonl)."""
    m = _REPLY.match(text or "")
    if m is None:
        return None
    return m.group(1).lower(), (m.group(2) or "").strip()


def judge_check(ok: bool, text: str | None, error: str | None, input_tokens: int,
                output_tokens: int, usd: float) -> FollowCheck:
    """The judge estimator's verdict from its call: unknown when the call failed or the reply
    is not in the fixed form."""
    if not ok:
        return FollowCheck("judge", "unknown", f"judge call failed: {error}", error=error)
    parsed = parse_judge_reply(text)
    if parsed is None:
        return FollowCheck("judge", "unknown", "judge reply not in the form `followed: yes|no`",
                           input_tokens, output_tokens, usd, "unparseable")
    return FollowCheck("judge", parsed[0], parsed[1], input_tokens, output_tokens, usd)


def primary(checks: Sequence[FollowCheck], estimator: str) -> tuple[str, str]:
    """(followed, reason) of the estimator α is measured with; unknown when it did not run."""
    for c in checks:
        if c.estimator == estimator:
            return c.verdict, c.reason
    return "unknown", f"no {estimator} estimator for this execution (api.follow_check)"


def exchange_digest(messages: Sequence[Mapping[str, str]], text: str) -> str:
    """The identity of one (prompt, reply) exchange: labels made by a client and records kept
    by a server (the simulator's ground truth) join on it."""
    canon = [[str(m["role"]), str(m["content"])] for m in messages] + [["assistant", text]]
    return hashlib.sha256(json.dumps(canon, ensure_ascii=False).encode()).hexdigest()


def agreement(pairs: Sequence[tuple[str, bool]]) -> dict:
    """How an estimator's verdicts agree with reference labels (True = followed).

    `unknown` verdicts are left out of agreement and kappa and counted. Cohen's kappa corrects
    the agreement for what two raters with these marginals would reach by chance; it is None
    when chance agreement is already 1 (both label everything the same way).
    """
    decided = [(v == "yes", t) for v, t in pairs if v != "unknown"]
    n = len(decided)
    out = {"n": len(pairs), "decided": n, "unknown": len(pairs) - n,
           "agreement": None, "kappa": None,
           "confusion": {"yes_true": sum(e and t for e, t in decided),
                         "yes_false": sum(e and not t for e, t in decided),
                         "no_true": sum(not e and t for e, t in decided),
                         "no_false": sum(not e and not t for e, t in decided)}}
    if not n:
        return out
    po = sum(e == t for e, t in decided) / n
    pe_yes = sum(e for e, _ in decided) / n * sum(t for _, t in decided) / n
    pe_no = sum(not e for e, _ in decided) / n * sum(not t for _, t in decided) / n
    pe = pe_yes + pe_no
    out["agreement"] = po
    out["kappa"] = None if pe >= 1.0 else (po - pe) / (1.0 - pe)
    return out
