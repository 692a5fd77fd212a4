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
    temperature, seed)`. The judge reads texts only; the world sets whether it may read the
    core's announcement and the rates at which it errs."""
    if name in PROFILES:
        return SimCore(name, world)
    if name == SimTeacher.name:
        return SimTeacher(world)
    if name == SimJudge.name:
        return SimJudge(world)
    raise UserError(f"unknown simulated model {name!r}; known: {', '.join(NAMES)} (check the endpoint's model)")
