"""Registry of the simulated models by the names an endpoint config uses."""

from __future__ import annotations

from functools import cache

from exectune_jax.errors import UserError
from exectune_jax.sim.core import PROFILES, SimCore
from exectune_jax.sim.judge import SimJudge
from exectune_jax.sim.teacher import SimTeacher
from exectune_jax.world import WORLD, WorldSpec

NAMES = (*PROFILES, SimTeacher.name, SimJudge.name)


@cache
def get(name: str, world: WorldSpec = WORLD) -> SimCore | SimTeacher | SimJudge:
    """The simulated model `name` in `world`; each has `.complete(messages, *, max_tokens,
    temperature, seed)`. The judge reads texts only, so it is the same in every world."""
    if name in PROFILES:
        return SimCore(name, world)
    if name == SimTeacher.name:
        return SimTeacher(world)
    if name == SimJudge.name:
        return SimJudge()
    raise UserError(f"unknown simulated model {name!r}; known: {', '.join(NAMES)} (check the endpoint's model)")
