"""The shared optimizer: schedule shape, where weight decay applies, clipping, accumulation."""

import jax.numpy as jnp
import numpy as np
import pytest

from exectune_jax.train.optim import decay_mask, lr_schedule, make_optimizer


def test_schedule_warms_up_linearly_then_decays_to_a_tenth():
    lr = lr_schedule(1.0, steps=10, warmup=2)
    assert [float(lr(s)) for s in (0, 1, 2)] == pytest.approx([0.0, 0.5, 1.0])
    assert float(lr(6)) == pytest.approx(0.1 + 0.9 * 0.5)  # cosine midpoint
    assert float(lr(10)) == pytest.approx(0.1)


def test_weight_decay_skips_vectors():
    params = {"kernel": jnp.ones((2, 3)), "scale": jnp.ones(3)}
    assert decay_mask(params) == {"kernel": True, "scale": False}
    tx = make_optimizer(1.0, steps=10, weight_decay=0.5, clip_norm=None)
    grads = {"kernel": jnp.zeros((2, 3)), "scale": jnp.zeros(3)}
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["kernel"], -0.5)  # lr 1 (no warm-up) x decay 0.5 x w 1
    np.testing.assert_allclose(updates["scale"], 0.0)


def test_clipping_bounds_the_gradient_seen_by_adam():
    params = {"w": jnp.zeros(4)}
    clipped = make_optimizer(1.0, steps=10, clip_norm=1.0, b1=0.0, b2=0.0)
    unclipped = make_optimizer(1.0, steps=10, clip_norm=None, b1=0.0, b2=0.0)
    big = {"w": jnp.array([300.0, 400.0, 0.0, 0.0])}
    state_c, state_u = clipped.init(params), unclipped.init(params)
    # Adam normalises the step size, so compare the second moments each one stored.
    _, state_c = clipped.update(big, state_c, params)
    _, state_u = unclipped.update(big, state_u, params)
    nu_c = state_c[1][0].nu["w"]
    nu_u = state_u[0][0].nu["w"]
    np.testing.assert_allclose(jnp.sqrt(nu_c.sum()), 1.0, rtol=1e-5)
    np.testing.assert_allclose(jnp.sqrt(nu_u.sum()), 500.0, rtol=1e-5)


def test_accumulation_applies_one_update_with_the_mean_gradient():
    params = {"w": jnp.ones(3)}
    g1, g2 = {"w": jnp.array([1.0, 2.0, 3.0])}, {"w": jnp.array([3.0, 2.0, 1.0])}
    acc = make_optimizer(0.1, steps=10, grad_accum=2, clip_norm=None)
    plain = make_optimizer(0.1, steps=10, clip_norm=None)
    state = acc.init(params)
    first, state = acc.update(g1, state, params)
    np.testing.assert_allclose(first["w"], 0.0)
    second, state = acc.update(g2, state, params)
    assert np.abs(second["w"]).min() > 0
    mean = {"w": (g1["w"] + g2["w"]) / 2}
    expected, _ = plain.update(mean, plain.init(params), params)
    np.testing.assert_allclose(second["w"], expected["w"], rtol=1e-6)
