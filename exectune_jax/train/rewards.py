"""The RL reward: each term a small named function of one labelled strategy, weighted by preset.

Symbols (PAPER.md "The recipe"; the weights are our composition, the paper does not publish
them). For one strategy s on problem x, with S = 1 when the core reached a verified correct
answer, p0 = the core's success rate *alone* on x, L = 1 when s leaks the answer, USD the
price of the core call, J in [0, 1] an optional judge score, F = 1 when the follow check says
the core carried out s (gcop/follow.py), and g(s) = 1 when s is a well-formed `<strategy>` block:

    R = g(s) * ( w_format
               + w_success * S
               + w_improve * (1 - p0) * S          # bonus: the core alone would have failed
               - w_harm    * p0 * (1 - S)          # penalty: the core alone would have succeeded
               - w_leak    * L
               - lambda    * USD                   # `cost`: reward units per US dollar
               + w_judge   * J
               + w_followed * F )                  # optional (default 0): reward executability

`improve` and `harm` are the expectations of [core alone fails & s succeeds] and
[core alone succeeds & s fails] over the core-alone outcome, so a measured rate p0 (several
core-only samples) replaces a single noisy draw. With the gate on, a malformed strategy scores
exactly 0 whatever else happened (the core is not even asked); `w_format` >= `w_harm` keeps a
well-formed, non-leaking strategy at or above that floor up to its cost.

What a term does to the update depends on the advantage estimator (train/advantages.py;
derived in docs/rl.md). p0 is the same for every member of a group, so for an executed strategy
`improve` and `harm` together are a(p0) * S - w_harm * p0 with a(p0) = w_improve * (1 - p0) +
w_harm * p0: the group mean removes the constant (except against a gated member, which scores
0), and a(p0) adds to the weight of success on that problem. `dr_grpo` and `batch` keep that
weight (problems the core alone fails weigh more under `improve`, those it solves under
`harm`); `grpo` divides each group by its own spread, which removes it wherever success is what
varies. At equal weights a(p0) is the same on every problem: the pair then raises the success
weight and nothing else.

Two presets:
- `exectune`: every term above, gate on.
- `advisor`: the Advisor Models baseline: outcome only (w_success = 1), free-form advice, no
  gate, no leak or cost term.

A failed API call is never a reward of 0: `score` returns None and the sample leaves its group;
so does an executed sample whose follow check could not decide, when `followed` is weighted.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from exectune_jax.errors import UserError
from exectune_jax.io import write_text_atomic

TERMS = ("format", "success", "improve", "harm", "leak", "cost", "judge", "followed")
PENALTIES = frozenset({"harm", "leak", "cost"})


class RewardConfigError(UserError):
    """A reward weight the config names wrongly."""


@dataclass(frozen=True)
class Label:
    """What the host learned about one sampled strategy: the input of every reward term.

    `correct` is None when the core call (or the judge call) failed: such a sample is excluded,
    never scored. `executed` is False when the gate kept a malformed strategy from the core.
    """

    well_formed: bool
    leaked: bool
    executed: bool
    correct: bool | None
    core_alone: float | None  # p0; None when every core-only call for the problem failed
    usd: float
    judge: float | None = None
    followed: str | None = None  # the follow check: yes | no | unknown; None when not executed

    @property
    def failed(self) -> bool:
        return self.executed and self.correct is None


# ---------------------------------------------------------------------------------------------
# Terms: each maps a Label to a number in natural units (penalties positive; the sign is in
# `total`).


def format_gate(label: Label) -> float:
    """g(s): 1 for a well-formed strategy block, else 0."""
    return float(label.well_formed)


def execution_success(label: Label) -> float:
    """S: the core, given the strategy, reached a verified correct answer."""
    return float(bool(label.correct))


def improvement(label: Label) -> float:
    """(1 - p0) * S: expected [core alone fails and with s succeeds]; 0 when p0 is unknown."""
    if label.core_alone is None:
        return 0.0
    return (1.0 - label.core_alone) * execution_success(label)


def harm(label: Label) -> float:
    """p0 * (1 - S): expected [core alone succeeds and with s fails]; 0 when p0 is unknown."""
    if label.core_alone is None or not label.executed:
        return 0.0
    return label.core_alone * (1.0 - execution_success(label))


def leak(label: Label) -> float:
    """L: the strategy states the final answer (or the full code)."""
    return float(label.leaked)


def cost(label: Label) -> float:
    """USD of the core call this strategy caused (0 when it was not executed)."""
    return float(label.usd)


def judge(label: Label) -> float:
    """J in [0, 1]: the LLM judge's score of the strategy (0 when no judge is configured)."""
    return 0.0 if label.judge is None else float(label.judge)


def followed(label: Label) -> float:
    """F: the follow check says the core carried out the strategy (0 for no, unknown, gated)."""
    return float(label.followed == "yes")


TERM_FUNCTIONS: dict[str, Callable[[Label], float]] = {
    "format": format_gate,
    "success": execution_success,
    "improve": improvement,
    "harm": harm,
    "leak": leak,
    "cost": cost,
    "judge": judge,
    "followed": followed,
}


# ---------------------------------------------------------------------------------------------
# Presets and the total


@dataclass(frozen=True)
class RewardSpec:
    """Weights (non-negative magnitudes; penalties are subtracted) and whether the gate is on.

    `messages` names the guide prompt: `guide` (structured strategy) or `advisor` (free-form).
    """

    gate: bool
    weights: Mapping[str, float]
    messages: str

    @property
    def uses_judge(self) -> bool:
        return self.weights.get("judge", 0.0) > 0.0

    @property
    def uses_followed(self) -> bool:
        return self.weights.get("followed", 0.0) > 0.0

    @property
    def uses_core_alone(self) -> bool:
        return self.weights.get("improve", 0.0) > 0.0 or self.weights.get("harm", 0.0) > 0.0


PRESETS: dict[str, RewardSpec] = {
    "exectune": RewardSpec(
        gate=True,
        weights={"format": 0.5, "success": 1.0, "improve": 0.5, "harm": 0.5, "leak": 2.0,
                 "cost": 100.0, "judge": 0.0, "followed": 0.0},
        messages="guide",
    ),
    "advisor": RewardSpec(
        gate=False,
        weights={"format": 0.0, "success": 1.0, "improve": 0.0, "harm": 0.0, "leak": 0.0,
                 "cost": 0.0, "judge": 0.0, "followed": 0.0},
        messages="advisor",
    ),
}


def spread_tolerance(spec: RewardSpec, cost_resolution_usd: float) -> float:
    """The reward difference that `cost_resolution_usd` is worth (lambda * resolution): rewards
    closer than this are no spread (0 when cost is not weighted)."""
    return spec.weights.get("cost", 0.0) * cost_resolution_usd


def make_spec(preset: str, overrides: Mapping[str, float] | None = None) -> RewardSpec:
    """The preset's spec with `rl.weights` overrides applied (unknown names are an error)."""
    if preset not in PRESETS:
        raise RewardConfigError(
            f"config: `rl.preset` is {preset!r}; choose one of {', '.join(PRESETS)}"
        )
    base = PRESETS[preset]
    overrides = dict(overrides or {})
    for name, value in overrides.items():
        if name not in TERMS:
            raise RewardConfigError(
                f"config: unknown reward term `rl.weights.{name}`; valid: {', '.join(TERMS)}"
            )
        if value < 0:
            raise RewardConfigError(
                f"config: `rl.weights.{name}` is {value}; weights are magnitudes (>= 0), "
                "penalties are subtracted already"
            )
    return RewardSpec(gate=base.gate, weights={**base.weights, **overrides}, messages=base.messages)


def term_values(label: Label) -> dict[str, float]:
    """Every term's raw value for one label (logged per step, whatever the weights)."""
    return {name: fn(label) for name, fn in TERM_FUNCTIONS.items()}


def total(values: Mapping[str, float], spec: RewardSpec) -> float:
    """R from term values: weighted sum, penalties subtracted, times the gate when it is on."""
    r = sum(
        (-1.0 if name in PENALTIES else 1.0) * spec.weights.get(name, 0.0) * values[name]
        for name in TERMS
    )
    if spec.gate:
        r *= values["format"]
    return r


def score(label: Label, spec: RewardSpec) -> float | None:
    """The reward of one sample, or None when its API call failed (excluded, never 0)."""
    if label.failed or (spec.uses_judge and label.executed and label.judge is None):
        return None
    if spec.uses_followed and label.executed and label.followed not in ("yes", "no"):
        return None
    if spec.gate and not label.well_formed:
        return 0.0
    return total(term_values(label), spec)


# ---------------------------------------------------------------------------------------------
# Core-alone success rates: measured once per problem, cached in the stage directory


def core_alone_rate(correct: Sequence[bool | None]) -> float | None:
    """Fraction of successful core-only calls that were correct; None when all failed."""
    scored = [c for c in correct if c is not None]
    return sum(scored) / len(scored) if scored else None


class CoreAloneCache:
    """p0 per problem id in a JSON file, so each problem's core-only calls happen once per run.

    Problems whose calls all failed are not stored: they are measured again next time.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.rates: dict[str, float] = {}
        self._lock = threading.Lock()  # several batches may be labelled at once
        if self.path.exists():
            self.rates = json.loads(self.path.read_text())

    def missing(self, ids: Sequence[str]) -> list[str]:
        with self._lock:
            return [i for i in dict.fromkeys(ids) if i not in self.rates]

    def update(self, rates: Mapping[str, float | None]) -> None:
        with self._lock:
            fresh = {k: v for k, v in rates.items() if v is not None and k not in self.rates}
            if not fresh:
                return
            self.rates.update(fresh)
            write_text_atomic(self.path, json.dumps(self.rates, sort_keys=True))

    def get(self, problem_id: str) -> float | None:
        with self._lock:
            return self.rates.get(problem_id)


# ---------------------------------------------------------------------------------------------
# Optional LLM judge


JUDGE_SYSTEM = (
    "You grade a strategy that a planner wrote for another model to follow. Score 0-10: "
    "10 = every step is one concrete, checkable action on quantities of the problem; "
    "0 = vague, wrong, or it simply states the final answer. Reply with the number only."
)


def judge_messages(problem_text: str, strategy_text: str) -> list[dict]:
    return [
        {"role": "system", "content": JUDGE_SYSTEM},
        {"role": "user", "content": f"Problem:\n{problem_text}\n\nStrategy:\n{strategy_text}"},
    ]


def parse_judge_score(text: str | None) -> float | None:
    """The judge's 0-10 score scaled to [0, 1]; None when the reply holds no number."""
    match = re.search(r"\d+(?:\.\d+)?", text or "")
    if match is None:
        return None
    return min(max(float(match.group()) / 10.0, 0.0), 1.0)
