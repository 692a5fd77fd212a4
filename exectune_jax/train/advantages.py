"""Advantage estimators: how a batch of rewards becomes one number per sample (docs/rl.md).

Every estimator compares a sample with its siblings for the same problem (its group), over the
*valid* members only: a sample whose API call failed carries no reward, so it neither shifts its
siblings' baseline nor receives a gradient (advantage 0). A group teaches nothing, and gets
advantage 0 throughout, when fewer than two members are valid or when its valid rewards all lie
within `spread_tol` of each other (reward units: RL passes lambda * rl.cost_resolution_usd, so a
cost difference below the stated USD resolution is not spread).

With d = r - mean_group(r) over the valid members, the registered estimators (`rl.advantage`):

    grpo     A = d / max(std_group, floor)    GRPO: every group rescaled to unit spread
    dr_grpo  A = d                            Dr. GRPO: reward units, each weight as written
    batch    A = d / max(std_batch, floor)    one scale for the batch (REINFORCE++ baseline)

std_batch pools d over the valid members of the batch's informative groups. `floor`
(`rl.std_floor`) is in reward units: a group or batch whose spread is smaller is divided by the
floor, so a small spread stays a small update instead of being blown up to unit size.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from exectune_jax.errors import UserError


def informative_groups(rewards: np.ndarray, valid: np.ndarray, spread_tol: float = 0.0) -> np.ndarray:
    """[P] bool: groups with two or more valid rewards whose range exceeds `spread_tol`."""
    rewards, valid = np.asarray(rewards, np.float64), np.asarray(valid, bool)
    hi = np.where(valid, rewards, -np.inf).max(axis=1)
    lo = np.where(valid, rewards, np.inf).min(axis=1)
    return (valid.sum(axis=1) >= 2) & (hi - lo > spread_tol)


def centred(rewards: np.ndarray, valid: np.ndarray, spread_tol: float = 0.0) -> np.ndarray:
    """d = r - mean of the group's valid rewards [P, G]; 0 for invalid members and for groups
    that are not informative."""
    rewards, valid = np.asarray(rewards, np.float64), np.asarray(valid, bool)
    r = np.where(valid, rewards, 0.0)
    mean = r.sum(axis=1, keepdims=True) / np.maximum(valid.sum(axis=1, keepdims=True), 1)
    keep = valid & informative_groups(rewards, valid, spread_tol)[:, None]
    return np.where(keep, rewards - mean, 0.0)


def _scaled(d: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return np.divide(d, scale, out=np.zeros_like(d), where=scale > 0).astype(np.float32)


def group_advantages(rewards: np.ndarray, valid: np.ndarray, std_floor: float = 0.0,
                     spread_tol: float = 0.0) -> np.ndarray:
    """grpo: rewards, valid [P, G] -> d / max(std of the group's valid rewards, std_floor)."""
    d = centred(rewards, valid, spread_tol)
    n = np.maximum(np.asarray(valid, bool).sum(axis=1, keepdims=True), 1)
    std = np.sqrt((d**2).sum(axis=1, keepdims=True) / n)
    return _scaled(d, np.maximum(std, std_floor))


def dr_grpo_advantages(rewards: np.ndarray, valid: np.ndarray, std_floor: float = 0.0,
                       spread_tol: float = 0.0) -> np.ndarray:
    """dr_grpo: d itself, in reward units (no division, so `std_floor` does not apply)."""
    return centred(rewards, valid, spread_tol).astype(np.float32)


def batch_advantages(rewards: np.ndarray, valid: np.ndarray, std_floor: float = 0.0,
                     spread_tol: float = 0.0) -> np.ndarray:
    """batch: d / max(std of d over the valid members of the informative groups, std_floor)."""
    d = centred(rewards, valid, spread_tol)
    counted = np.asarray(valid, bool) & informative_groups(rewards, valid, spread_tol)[:, None]
    std = np.sqrt((d**2).sum() / counted.sum()) if counted.any() else 0.0
    return _scaled(d, np.asarray(max(std, std_floor)))


Estimator = Callable[[np.ndarray, np.ndarray, float, float], np.ndarray]
ESTIMATORS: dict[str, Estimator] = {
    "grpo": group_advantages,
    "dr_grpo": dr_grpo_advantages,
    "batch": batch_advantages,
}


def estimator(name: str) -> Estimator:
    """The registered estimator `name`; a config error naming `rl.advantage` otherwise."""
    if name not in ESTIMATORS:
        raise UserError(f"config: `rl.advantage` is {name!r}; choose one of {', '.join(ESTIMATORS)}")
    return ESTIMATORS[name]


def advantages(name: str, rewards: np.ndarray, valid: np.ndarray, *, std_floor: float,
               spread_tol: float) -> np.ndarray:
    """Advantages [P, G] float32 by the estimator `name` (see the module docstring)."""
    return estimator(name)(rewards, valid, std_floor, spread_tol)


def informative_share(rewards: list[float | None], group_size: int, spread_tol: float = 0.0) -> float:
    """The share of groups an update learns from: two or more valid rewards whose range exceeds
    `spread_tol` (the same test every estimator applies)."""
    values, valid = group_rewards(rewards, group_size)
    return float(informative_groups(values, valid, spread_tol).mean())


def group_rewards(
    rewards: list[float | None], group_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Flat per-sample rewards (None = failed call) -> ([P, G] rewards, [P, G] valid mask)."""
    if len(rewards) % group_size:
        raise ValueError(f"{len(rewards)} rewards do not form groups of {group_size}")
    valid = np.array([r is not None for r in rewards]).reshape(-1, group_size)
    values = np.array([0.0 if r is None else r for r in rewards], np.float64)
    return values.reshape(-1, group_size), valid
