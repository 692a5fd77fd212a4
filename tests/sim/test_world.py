"""The frozen world: one versioned spec whose hash changes with any value and only then."""

import dataclasses
import subprocess
import sys

import pytest

from exectune_jax.sim import models
from exectune_jax.sim.world import WORLD, CoreProfile, WorldSpec


def test_world_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        WORLD.follow_compound = 0.9


def test_hash_is_stable_across_processes_and_moves_with_any_value():
    other = subprocess.run([sys.executable, "-c", "from exectune_jax.sim.world import WORLD; print(WORLD.hash)"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert other == WORLD.hash == WorldSpec().hash
    changed = [dataclasses.replace(WORLD, follow_compound=0.56),
               dataclasses.replace(WORLD, core=CoreProfile(1.11, 0.09, 0.03, 0.004)),
               dataclasses.replace(WORLD, teacher_habit=(("atomic", 0.2), *WORLD.teacher_habit[1:]))]
    assert len({WORLD.hash, *(w.hash for w in changed)}) == 4
    assert WORLD.summary() == {"version": WORLD.version, "hash": WORLD.hash}


def test_simulated_models_read_their_numbers_from_the_world():
    core, strong, teacher = models.get("sim-core"), models.get("sim-core-strong"), models.get("sim-teacher")
    assert core.world is strong.world is teacher.world is WORLD
    assert core.profile == WORLD.core and strong.profile == WORLD.core_strong
    assert core.solo_rate(0) == WORLD.success_ceil and core.solo_rate(40) == WORLD.success_floor
