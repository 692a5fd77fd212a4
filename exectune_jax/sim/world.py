"""`WorldSpec`: every behaviour parameter of the simulated world, frozen and versioned.

sim-core, sim-teacher and the base guide's advice read their numbers from `WORLD` and from
nowhere else, so a run's behaviour is fixed by one object whose `hash` results.json records.
Change a value only with a new `version` and a validation-split run recorded in docs/world.md;
the test split never chooses a value.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass


@dataclass(frozen=True)
class CoreProfile:
    """How one simulated core solves a problem alone, and how carefully it follows steps."""

    intercept: float  # success alone at k steps = clamp(intercept - slope * k)
    slope: float
    flip: float  # per-sample chance the outcome of its own attempt flips (sampling noise)
    slip: float  # per followed operation, chance of an arithmetic slip (a careless core)


@dataclass(frozen=True)
class WorldSpec:
    version: str = "2"
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
    # the step that uses it, so most of its proposals there are compound.
    teacher_habit: tuple[tuple[str, float], ...] = (
        ("atomic", 0.10), ("compound", 0.80), ("verbose", 0.03), ("vague", 0.03), ("wrong", 0.02),
        ("leak", 0.02))
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

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def hash(self) -> str:
        """A stable digest of every value (not of how the source spells them)."""
        text = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def summary(self) -> dict:
        """What results.json records of the world: its version and hash."""
        return {"version": self.version, "hash": self.hash}


WORLD = WorldSpec()
