"""The TPU attention path: the splash kernel's inputs, the kernel itself, and when attend uses it.

Pallas runs the kernel in its interpreter on CPU, so its numbers are checked here against
`attend_reference` (forward and gradients, packed rows, GQA, padded length, under a mesh);
what the interpreter cannot check is Mosaic's lowering on a real TPU, which the last test does
where one is present.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from exectune_jax import parallel
from exectune_jax.models import attention

H, K, D = 4, 2, 16
T = 200  # not a multiple of the kernel's 128-slot tile: the padding is exercised


def packed_segments(batch: int, t: int) -> jnp.ndarray:
    """Rows of six segments each in random order and lengths, padding (0) among them."""
    rng = np.random.default_rng(0)
    rows = [np.repeat(rng.permutation(6), rng.multinomial(t - 6, np.ones(6) / 6) + 1)
            for _ in range(batch)]
    return jnp.asarray(np.stack(rows), jnp.int32)


def square_mask(segments: jnp.ndarray) -> jnp.ndarray:
    slots = jnp.arange(segments.shape[1])
    return attention.attention_mask(segments, slots, segments, slots)


def inputs(batch: int):
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(k1, (batch, T, H, D))
    k, v = jax.random.normal(k2, (batch, T, K, D)), jax.random.normal(k3, (batch, T, K, D))
    return q, k, v, square_mask(packed_segments(batch, T))


def grads(fn, q, k, v, mask):
    return jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v, mask) ** 2), argnums=(0, 1, 2))(q, k, v)


def splash_interpreted(q, k, v, mask):
    return attention.attend_splash(q, k, v, mask, interpret=True)


def test_segment_ids_from_the_mask_rebuild_the_same_mask():
    segments = packed_segments(3, 64)
    # one row all padding; one segment id in two separate runs (a slot's id, not its run)
    segments = segments.at[1].set(0).at[2, 40:50].set(segments[2, 0])
    mask = square_mask(segments)
    ids = attention.splash_segment_ids(mask)
    np.testing.assert_array_equal(square_mask(ids), mask)
    same_ids = ids[:, :, None] == ids[:, None, :]
    np.testing.assert_array_equal(same_ids, segments[:, :, None] == segments[:, None, :])


def test_splash_kernel_equals_the_reference_with_gradients():
    q, k, v, mask = inputs(2)
    np.testing.assert_allclose(splash_interpreted(q, k, v, mask),
                               attention.attend_reference(q, k, v, mask), atol=1e-5)
    for got, want in zip(grads(splash_interpreted, q, k, v, mask),
                         grads(attention.attend_reference, q, k, v, mask), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_splash_kernel_under_a_mesh_runs_per_shard_and_equals_the_reference():
    q, k, v, mask = inputs(4)
    mesh = parallel.make_mesh(2, 2, 2)  # rows over data x fsdp, the 2 KV heads over tensor
    with parallel.use_mesh(mesh):
        assert "shard_map" in str(jax.make_jaxpr(splash_interpreted)(q, k, v, mask))
        got = jax.jit(splash_interpreted)(q, k, v, mask)
    np.testing.assert_allclose(got, attention.attend_reference(q, k, v, mask), atol=1e-5)


def test_attend_uses_splash_on_tpu_only_where_queries_and_keys_are_the_same_slots(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    q, k = jnp.zeros((1, 8, H, D)), jnp.zeros((1, 8, K, D))
    assert attention._splash_applies(q, k)  # training, log-probs, a prefill filling the cache
    assert not attention._splash_applies(q[:, :1], k)  # a decode step
    assert not attention._splash_applies(q, jnp.zeros((1, 24, K, D)))  # prefill, longer cache
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert not attention._splash_applies(q, k)


@pytest.mark.skipif(jax.default_backend() != "tpu",
                    reason="the compiled (Mosaic) splash kernel needs a TPU; the interpreted "
                           "kernel is checked above")
def test_attend_on_tpu_runs_the_compiled_kernel_and_equals_the_reference():
    q, k, v, mask = inputs(2)
    assert "pallas_call" in str(jax.make_jaxpr(attention.attend)(q, k, v, mask))
    with jax.default_matmul_precision("highest"):
        np.testing.assert_allclose(attention.attend(q, k, v, mask),
                                   attention.attend_reference(q, k, v, mask), atol=1e-2)
        for got, want in zip(grads(attention.attend, q, k, v, mask),
                             grads(attention.attend_reference, q, k, v, mask), strict=True):
            np.testing.assert_allclose(got, want, atol=5e-2)
