import jax
import jax.numpy as jnp
import numpy as np
import pytest

from exectune_jax.models import transformer

B, H, K, D = 2, 4, 2, 8
T, S = 1068, 1100  # several query blocks once the score bound is lowered below


@pytest.fixture(autouse=True)
def small_score_bound(monkeypatch):
    monkeypatch.setattr(transformer, "ATTENTION_SCORE_BYTES", B * H * 128 * S * 4)


def inputs():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(k1, (B, T, H, D))
    k, v = jax.random.normal(k2, (B, S, K, D)), jax.random.normal(k3, (B, S, K, D))
    q_segments = jnp.ones((B, T), jnp.int32).at[0, :20].set(0)  # padding queries
    kv_segments = jnp.ones((B, S), jnp.int32).at[1, :30].set(0)  # empty cache slots
    mask = transformer.attention_mask(q_segments, 50 + jnp.arange(T), kv_segments, jnp.arange(S))
    return q, k, v, mask


def test_blocked_attention_equals_the_full_score_reference_with_gradients():
    q, k, v, mask = inputs()
    np.testing.assert_allclose(transformer.attend(q, k, v, mask),
                               transformer.attend_reference(q, k, v, mask), atol=1e-5)

    def grads(fn):
        return jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v, mask) ** 2), argnums=(0, 1, 2))(q, k, v)

    for got, want in zip(grads(transformer.attend), grads(transformer.attend_reference),
                         strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_query_blocks_are_powers_of_two_within_the_score_bound():
    assert transformer.query_block(B, H, T, S) == 128
    assert transformer.query_block(B, H, 100, S) == 100  # fits whole: one block
    assert transformer.query_block(64 * B, H, T, S) == transformer.MIN_QUERY_BLOCK


def test_blocked_attention_needs_a_fraction_of_the_full_score_memory():
    q, k, v, mask = inputs()

    def temp_bytes(fn):
        return jax.jit(fn).lower(q, k, v, mask).compile().memory_analysis().temp_size_in_bytes

    full_scores = B * H * T * S * 4  # one float32 [B, H, T, S] array
    assert temp_bytes(transformer.attend_reference) >= full_scores
    assert temp_bytes(transformer.attend) < full_scores / 2
