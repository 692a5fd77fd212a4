"""`WorldSpec`: every behaviour parameter of the simulated world, frozen and versioned.

sim-core, sim-teacher and the base guide's advice read their numbers from a `WorldSpec` and
from nowhere else, so a run's behaviour is fixed by one object whose `hash` results.json records.
`WORLD` is the default world. Change one of its values only with a new `version` and a
validation-split run recorded in docs/world.md; the test split never chooses a value.

A run may name other values (config `sim.world`, read by `world_from`): the study's sensitivity
ablation does, to see how the results move with the world. Such a world keeps its base's version
and differs in its hash, and results.json records the overrides beside it. `version: 2` or `3`
makes an earlier version the base (`WORLDS`), so its published tables can be reproduced.

The spec is plain data (standard library only), so it sits below config, which validates a run's
`sim.world` when the config is loaded; the simulator (`sim/`) reads it from here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CoreProfile:
    """How one simulated core solves a problem alone, and how carefully it follows steps."""

    intercept: float  # success alone at k steps = clamp(intercept - slope * k)
    slope: float
    flip: float  # per-sample chance the outcome of its own attempt flips (sampling noise)
    slip: float  # per followed operation, chance of an arithmetic slip (a careless core)


@dataclass(frozen=True)
class WorldSpec:
    version: str = "4"
    # A small instruct core solves short word problems mostly and loses ~9 points per extra
    # operation (GSM8K accuracy falls with solution length); 2..7 steps average ~70% alone.
    core: CoreProfile = CoreProfile(intercept=1.11, slope=0.09, flip=0.03, slip=0.003)
    # A stronger, dearer core: higher at every length and flatter, with fewer slips.
    core_strong: CoreProfile = CoreProfile(intercept=1.09, slope=0.055, flip=0.02, slip=0.002)
    # Even trivial problems fail sometimes, and hard ones are sometimes guessed right.
    success_floor: float = 0.03
    success_ceil: float = 0.98
    # A step longer than this reads as a paragraph, not an instruction (verbose).
    max_step_words: int = 14
    # Chance the core carries out one step, by what the step asks (see sim/follow.py). One
    # operation on numbers it can see is what instruct models do reliably.
    follow_atomic: float = 0.98
    # The same operation named in a prose sentence ("adding 26 to the amount so far"): read
    # correctly most of the time, but the operand order and the referent are implicit.
    follow_prose: float = 0.85
    # Two chained operations in one step ("Multiply 9 by 12, then add 26 to that"): real
    # instruct models often follow them, but merged steps are where they drop a part.
    follow_compound: float = 0.55
    # A step whose operation is buried in a long sentence: often skimmed past.
    follow_verbose: float = 0.30
    # A step whose operand is a vague reference ("the total", "that"): the core must guess
    # which earlier amount is meant, and often stops to reason for itself instead.
    follow_vague: float = 0.25
    # The core's own chain of thought adds this many filler sentences per operation (checks,
    # restating the story): why its own reasoning costs more tokens than a followed strategy.
    own_filler_per_step: int = 1
    # Teacher style mix on a first proposal: a strong model writes followable steps about half
    # the time and otherwise compound, verbose, vague, wrong or answer-leaking ones.
    teacher_propose: tuple[tuple[str, float], ...] = (
        ("atomic", 0.50), ("compound", 0.12), ("verbose", 0.12), ("vague", 0.10), ("wrong", 0.10),
        ("leak", 0.06))
    # On problems with a count-times-size step the teacher's habit is to fold that product into
    # the step that uses it, as often as GSM8K's step-by-step solutions do (0.15 of such
    # products; docs/world.md, "The teacher's habit rate"). The other styles keep version 3's
    # proportions (V3_HABIT).
    teacher_habit: tuple[tuple[str, float], ...] = (
        ("atomic", 0.425), ("compound", 0.15), ("verbose", 0.1275), ("vague", 0.1275), ("wrong", 0.085),
        ("leak", 0.085))
    # Told that the core failed, the teacher mostly rewrites the strategy in plain single steps.
    teacher_revise: tuple[tuple[str, float], ...] = (
        ("atomic", 0.80), ("compound", 0.05), ("verbose", 0.05), ("vague", 0.05), ("wrong", 0.05))
    # In a compound proposal, each mergeable step outside a habit site is merged this often.
    teacher_merge_rate: float = 0.5
    # In a verbose or vague proposal, each step (or reference) is padded or blurred this often.
    teacher_verbose_rate: float = 0.6
    teacher_vague_rate: float = 0.6
    # The base guide's prose advice starts a sentence with a connector other than "Then" this
    # often (wording only: every sentence names one operation and the problem's numbers).
    advice_connector_rate: float = 0.5
    # Version 3's mechanisms (docs/world.md, "World version 3"); each field's version-2 value is
    # in SINCE_V2. Whether the core says so when it sets a strategy aside ("I cannot follow the
    # strategy ..., so I will solve the problem my own way"): real instruct models rarely
    # announce it, they just answer their own way, so a judge must tell from the computations
    # alone. Version 2's core announced it and made sim-judge an oracle.
    core_announces_aside: bool = False
    # sim-judge answers "followed" where its reading of the response says not followed, this
    # often (by a stable hash of the exchange). LLM judges lean to yes (the NUS agreeableness-bias
    # study: true-positive rate above 96%, true-negative rate below 25%); reading computations
    # alone, sim-judge already errs that way more than the target (0.15), so version 3's rule
    # adds no flips here.
    judge_false_yes: float = 0.0
    # sim-judge answers "not followed" where its reading says followed, this often (same hash):
    # the rarer error, a judge that misreads a reordered or reformatted computation; a
    # true-positive rate of 96%, version 3's rule on its own reading (which never errs this way).
    judge_false_no: float = 0.04
    # A core that followed part of a strategy off track (a result that is not one of the
    # problem's true amounts) and then stopped following re-solves the problem from the start
    # this often, right then at its own rate alone; otherwise its answer is wrong. Real models
    # misled by a step often notice that the story does not fit and start again (GSM-IC).
    core_recovers: float = 1.0
    # Share of an operation's difficulty that the core's own reasoning is spared when the
    # strategy or advice names that operation correctly but the core did not carry the step
    # out: an instruct model that reads "multiply 3 by 5" as a hint does that product more
    # surely even when it answers its own way (hint prompting raises GSM8K accuracy); halfway
    # between "no help at all" and "as good as carrying it out".
    named_op_value: float = 0.5
    # A second core, `sim-core-next`: the vendor's next small model, which a guide trained for
    # sim-core meets when the vendor retires the old one (eval.cores). Better alone by about
    # half the gap to the strong core, flatter, with fewer slips; priced a little higher
    # (configs/prices.yaml).
    core_next: CoreProfile = CoreProfile(intercept=1.13, slope=0.075, flip=0.03, slip=0.002)
    # How sim-core-next carries out a step, by kind, in place of the follow_* values (which are
    # sim-core's and sim-core-strong's). Tuned to reason on its own, it re-plans terse one-line
    # steps a little more often, and it reads prose, merged and long steps and vague referents
    # better: a guide's strategies transfer to it, but the best style for it is another.
    core_next_follow: tuple[tuple[str, float], ...] = (
        ("atomic", 0.95), ("prose", 0.92), ("compound", 0.80), ("verbose", 0.45), ("vague", 0.40))
    # How a core carries out a step of a code strategy (task funcs, sim/code_follow.py), by kind,
    # for every core. One imperative step is one line of code, as reliable as one arithmetic
    # operation; prose and long steps read as in arith. A filter then a map in one step is one
    # list comprehension to a coder, so a merged step is dropped less often than a chained
    # arithmetic one; a vague number ("the given amount") can be looked up in the docstring, so
    # it stops the core less often than a vague arithmetic referent.
    code_follow: tuple[tuple[str, float], ...] = (
        ("atomic", 0.98), ("prose", 0.85), ("compound", 0.75), ("verbose", 0.30), ("vague", 0.45))

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def hash(self) -> str:
        """A stable digest of every value (not of how the source spells them). A field added
        after version 2 enters it only when it differs from the value that behaves as version 2
        did (`SINCE_V2`), so the worlds measured before it existed keep their hash."""
        values = {k: v for k, v in self.as_dict().items() if k not in SINCE_V2 or getattr(self, k) != SINCE_V2[k]}
        text = json.dumps(values, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def summary(self) -> dict:
        """What results.json records of the world: its version and hash."""
        return {"version": self.version, "hash": self.hash}


# Each field added after version 2 -> the value under which the world behaves as version 2 did.
# Adding a field leaves every earlier world's hash as it was (results.json, the published tables,
# a study resumed in its run_dir); any other value of the field changes the hash. Version 2 had
# no sim-core-next and no code world, so the values they were added with leave version 2's
# behaviour as it was.
SINCE_V2: dict[str, Any] = {"core_announces_aside": True, "judge_false_yes": 0.0, "judge_false_no": 0.0,
                            "core_recovers": 0.0, "named_op_value": 0.0,
                            "core_next": CoreProfile(intercept=1.13, slope=0.075, flip=0.03, slip=0.002),
                            "core_next_follow": (("atomic", 0.95), ("prose", 0.92), ("compound", 0.80),
                                                 ("verbose", 0.45), ("vague", 0.40)),
                            "code_follow": (("atomic", 0.98), ("prose", 0.85), ("compound", 0.75),
                                            ("verbose", 0.30), ("vague", 0.45))}

WORLD = WorldSpec()
# Versions 2 and 3, whose tables docs/ still quote: `sim.world.version: 3` runs in version 3 (hash
# f40318248245aa37), version 4 with the habit rate an earlier version had raised to 0.8 on
# test-split numbers; version 2 (hash 35716ebe7bfb5013) is version 3 with the fields added after
# it at the values it behaved with.
V3_HABIT: tuple[tuple[str, float], ...] = (
    ("atomic", 0.10), ("compound", 0.80), ("verbose", 0.03), ("vague", 0.03), ("wrong", 0.02), ("leak", 0.02))
WORLD_V3 = dataclasses.replace(WORLD, version="3", teacher_habit=V3_HABIT)
WORLD_V2 = dataclasses.replace(WORLD_V3, version="2", **SINCE_V2)
WORLDS = {"2": WORLD_V2, "3": WORLD_V3, "4": WORLD}

# ---------------------------------------------------------------------------------------------
# Overrides (config `sim.world`): the default world with some values named otherwise

# The one derived knob: the compound share of `teacher_habit`. The other styles of that mix are
# rescaled by (1 - rate) / (1 - their compound share) and so keep their proportions to each other.
HABIT_RATE = "teacher_habit_rate"
_PROBABILITY = (0.0, 1.0)
# closed [lo, hi] of each scalar an override may set
RANGES: dict[str, tuple[float, float]] = {
    "success_floor": _PROBABILITY, "success_ceil": _PROBABILITY, "max_step_words": (1, math.inf),
    "follow_atomic": _PROBABILITY, "follow_prose": _PROBABILITY, "follow_compound": _PROBABILITY,
    "follow_verbose": _PROBABILITY, "follow_vague": _PROBABILITY,
    "own_filler_per_step": (0, math.inf), "teacher_merge_rate": _PROBABILITY,
    "teacher_verbose_rate": _PROBABILITY, "teacher_vague_rate": _PROBABILITY,
    "advice_connector_rate": _PROBABILITY, HABIT_RATE: _PROBABILITY,
    "judge_false_yes": _PROBABILITY, "judge_false_no": _PROBABILITY,
    "core_recovers": _PROBABILITY, "named_op_value": _PROBABILITY,
}
FLAGS = ("core_announces_aside",)  # true/false values an override may set
PROFILE_RANGES: dict[str, tuple[float, float]] = {
    "intercept": (0.0, 2.0), "slope": (0.0, 1.0), "flip": _PROBABILITY, "slip": _PROBABILITY}
MIXES = ("teacher_propose", "teacher_habit", "teacher_revise")
PROFILES = ("core", "core_strong", "core_next")
# a core profile with its own follow probabilities -> the field that holds them (kind -> p)
FOLLOW_PROFILES = {"core_next": "core_next_follow"}
FOLLOW_KINDS = ("atomic", "prose", "compound", "verbose", "vague")
FOLLOWS = (*FOLLOW_PROFILES.values(), "code_follow")  # the fields that map each kind to a probability


def world_from(overrides: Mapping[str, Any], base: WorldSpec = WORLD, prefix: str = "") -> WorldSpec:
    """`base` with the values `overrides` names: `version` (another version's world as the base,
    WORLDS), a field -> its value (a core profile: a mapping of some of its fields; a style mix:
    a mapping of each of its styles to a weight, the weights summing to 1), and
    `teacher_habit_rate` (see HABIT_RATE). A bad key or value raises one-line ValueError naming
    `prefix + key`."""
    names = [f.name for f in dataclasses.fields(WorldSpec) if f.name != "version"] + [HABIT_RATE]
    if "version" in overrides:
        version = str(overrides["version"])
        if version not in WORLDS:
            raise ValueError(f"`{prefix}version` is {overrides['version']!r}; the worlds are versions "
                             f"{', '.join(WORLDS)}")
        base = WORLDS[version]
    if HABIT_RATE in overrides and "teacher_habit" in overrides:
        raise ValueError(f"`{prefix}{HABIT_RATE}` and `{prefix}teacher_habit` both set the habit "
                         "mix; give one")
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        name = prefix + key
        if key == "version":
            continue
        if key not in names:
            raise ValueError(f"`{name}` is not a value of the simulated world (known: {', '.join(names)})")
        if key in PROFILES:
            changes[key] = _profile(getattr(base, key), value, name)
        elif key in FOLLOWS:
            changes[key] = _follow(getattr(base, key), value, name)
        elif key in MIXES:
            changes[key] = _mix(getattr(base, key), value, name)
        elif key in FLAGS:
            if not isinstance(value, bool):
                raise ValueError(f"`{name}` must be true or false, got {value!r}")
            changes[key] = value
        elif key == HABIT_RATE:
            changes["teacher_habit"] = habit_mix(base.teacher_habit, _scalar(value, float, RANGES[key], name))
        else:
            changes[key] = _scalar(value, type(getattr(base, key)), RANGES[key], name)
    world = dataclasses.replace(base, **changes)
    if world.success_floor > world.success_ceil:
        raise ValueError(f"`{prefix}success_floor` ({world.success_floor}) is above "
                         f"`{prefix}success_ceil` ({world.success_ceil})")
    return world


def habit_mix(mix: tuple[tuple[str, float], ...], rate: float) -> tuple[tuple[str, float], ...]:
    """`mix` with its compound share set to `rate` and every other share scaled by
    (1 - rate) / (1 - compound share), so they keep their proportions to each other."""
    compound = dict(mix)["compound"]
    if compound >= 1.0 and rate < 1.0:
        raise ValueError("a habit mix that is all compound has no other styles to rescale")
    scale = 0.0 if compound >= 1.0 else (1.0 - rate) / (1.0 - compound)
    return tuple((s, rate if s == "compound" else round(w * scale, 12)) for s, w in mix)


def following(world: WorldSpec, profile: str) -> WorldSpec:
    """`world` as the core of profile field `profile` reads steps: its own follow probabilities
    in place of the follow_* values where it has some (FOLLOW_PROFILES)."""
    if profile not in FOLLOW_PROFILES:
        return world
    own = dict(getattr(world, FOLLOW_PROFILES[profile]))
    return dataclasses.replace(world, **{f"follow_{k}": p for k, p in own.items()})


def value_of(world: WorldSpec, name: str) -> Any:
    """The value `name` (a field, or HABIT_RATE) has in `world`."""
    return dict(world.teacher_habit)["compound"] if name == HABIT_RATE else getattr(world, name)


def summary_of(overrides: Mapping[str, Any]) -> dict:
    """What results.json records of a run's world: version, hash, and the overrides it ran with."""
    return {**world_from(overrides).summary(), "overrides": dict(overrides)}


def _scalar(value: Any, kind: type, bounds: tuple[float, float], name: str) -> float | int:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or (kind is int and not isinstance(value, int)):
        raise ValueError(f"`{name}` must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    if not bounds[0] <= value <= bounds[1]:
        raise ValueError(f"`{name}` is {value!r}; it must be in [{bounds[0]:g}, {bounds[1]:g}]")
    return kind(value)


def _profile(profile: CoreProfile, value: Any, name: str) -> CoreProfile:
    known = ", ".join(PROFILE_RANGES)
    if isinstance(value, CoreProfile):
        value = dataclasses.asdict(value)
    if not isinstance(value, Mapping):
        raise ValueError(f"`{name}` must be a mapping of some of {known}, got {value!r}")
    for k in value:
        if k not in PROFILE_RANGES:
            raise ValueError(f"`{name}.{k}` is not a value of a core profile (known: {known})")
    return dataclasses.replace(profile, **{k: _scalar(v, float, PROFILE_RANGES[k], f"{name}.{k}")
                                           for k, v in value.items()})


def _follow(follow: tuple[tuple[str, float], ...], value: Any, name: str) -> tuple[tuple[str, float], ...]:
    """A follow profile with the probabilities `value` names (a mapping or pairs: kind -> p)."""
    known = ", ".join(FOLLOW_KINDS)
    try:
        pairs = dict(value)
    except (TypeError, ValueError):
        pairs = None
    if pairs is None or not set(pairs) <= set(FOLLOW_KINDS):
        raise ValueError(f"`{name}` must map some of {known} to a probability, got {value!r}")
    given = {k: _scalar(p, float, _PROBABILITY, f"{name}.{k}") for k, p in pairs.items()}
    return tuple((k, given.get(k, p)) for k, p in follow)


def _mix(mix: tuple[tuple[str, float], ...], value: Any, name: str) -> tuple[tuple[str, float], ...]:
    styles = [s for s, _ in mix]
    if not isinstance(value, Mapping) or sorted(value) != sorted(styles):
        raise ValueError(f"`{name}` must map each of {', '.join(styles)} to a weight, got {value!r}")
    weights = {s: _scalar(value[s], float, _PROBABILITY, f"{name}.{s}") for s in styles}
    if not math.isclose(sum(weights.values()), 1.0, abs_tol=1e-9):
        raise ValueError(f"`{name}`: the weights sum to {sum(weights.values()):g}; they must sum to 1")
    return tuple((s, weights[s]) for s in styles)
