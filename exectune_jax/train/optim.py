"""The optimizer every training stage uses: AdamW, linear warm-up then cosine decay, clipping.

One factory so SFT and RL agree on the details that are easy to get subtly wrong: weight decay
skips vectors (norm scales, biases), clipping happens on the global norm before the Adam moments
see the gradient, and gradient accumulation counts *optimizer* steps in the schedule.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def lr_schedule(
    lr: float, steps: int, warmup: int, min_lr_ratio: float = 0.1
) -> optax.Schedule:
    """0 -> lr linearly over `warmup` steps, then cosine down to `lr * min_lr_ratio` at `steps`."""
    warmup = max(0, min(warmup, steps))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=lr,
        warmup_steps=warmup,
        decay_steps=max(steps, warmup + 1),
        end_value=lr * min_lr_ratio,
    )


def decay_mask(params):
    """Weight decay only on matrices: decaying norm scales and biases towards 0 hurts."""
    return jax.tree.map(lambda x: jnp.ndim(x) > 1, params)


def make_optimizer(
    lr: float,
    steps: int,
    warmup: int = 0,
    weight_decay: float = 0.0,
    clip_norm: float | None = 1.0,
    *,
    grad_accum: int = 1,
    b1: float = 0.9,
    b2: float = 0.95,
    min_lr_ratio: float = 0.1,
) -> optax.GradientTransformation:
    """AdamW with warm-up + cosine decay and global-norm clipping.

    `steps` counts optimizer updates. With `grad_accum > 1` the result is an `optax.MultiSteps`:
    call it once per micro-batch; it averages `grad_accum` gradients, then applies one update
    (and only then advances the schedule). `clip_norm=None` or `<= 0` disables clipping.
    """
    if grad_accum < 1:
        raise ValueError(f"grad_accum must be >= 1, got {grad_accum}")
    parts = []
    if clip_norm is not None and clip_norm > 0:
        parts.append(optax.clip_by_global_norm(clip_norm))
    parts.append(
        optax.adamw(
            lr_schedule(lr, steps, warmup, min_lr_ratio),
            b1=b1,
            b2=b2,
            weight_decay=weight_decay,
            mask=decay_mask,
        )
    )
    tx = optax.chain(*parts)
    if grad_accum > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=grad_accum)
    return tx
