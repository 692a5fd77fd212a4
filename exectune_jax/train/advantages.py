"""Group-normalised advantages (GRPO): each sample compared with its siblings for one prompt.

A = (r - mean_group(r)) / (std_group(r) + eps), over the *valid* members of each group only:
a sample whose API call failed carries no reward, so it neither shifts its siblings' baseline
nor receives a gradient (advantage 0). A group with fewer than two valid members, or whose
valid rewards are all equal, teaches nothing and gets advantage 0 throughout.
"""

from __future__ import annotations

import numpy as np


def group_advantages(rewards: np.ndarray, valid: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """rewards, valid: [P, G] (invalid entries' rewards are ignored) -> advantages [P, G] float32."""
    rewards = np.asarray(rewards, np.float64)
    valid = np.asarray(valid, bool)
    r = np.where(valid, rewards, 0.0)
    n = valid.sum(axis=1, keepdims=True)
    mean = r.sum(axis=1, keepdims=True) / np.maximum(n, 1)
    var = (np.where(valid, rewards - mean, 0.0) ** 2).sum(axis=1, keepdims=True) / np.maximum(n, 1)
    adv = (rewards - mean) / (np.sqrt(var) + eps)
    informative = (n >= 2) & (var > 0)
    return np.where(valid & informative, adv, 0.0).astype(np.float32)


def informative_share(rewards: list[float | None], group_size: int) -> float:
    """The share of groups an update learns from: those with a non-zero advantage (two or more
    valid rewards, not all equal)."""
    values, valid = group_rewards(rewards, group_size)
    return float(np.any(group_advantages(values, valid) != 0, axis=1).mean())


def group_rewards(
    rewards: list[float | None], group_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Flat per-sample rewards (None = failed call) -> ([P, G] rewards, [P, G] valid mask)."""
    if len(rewards) % group_size:
        raise ValueError(f"{len(rewards)} rewards do not form groups of {group_size}")
    valid = np.array([r is not None for r in rewards]).reshape(-1, group_size)
    values = np.array([0.0 if r is None else r for r in rewards], np.float64)
    return values.reshape(-1, group_size), valid
