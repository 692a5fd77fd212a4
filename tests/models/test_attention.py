import jax
import jax.numpy as jnp
import numpy as np
import pytest

from exectune_jax.models import attention

B, H, K, D = 2, 4, 2, 8
T, S = 1068, 1100  # several query blocks once the score bound is lowered below


@pytest.fixture(autouse=True)
def small_score_bound(monkeypatch):
    monkeypatch.setattr(attention, "ATTENTION_SCORE_BYTES", B * H * 128 * S * 4)


def inputs():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(k1, (B, T, H, D))
    k, v = jax.random.normal(k2, (B, S, K, D)), jax.random.normal(k3, (B, S, K, D))
    q_segments = jnp.ones((B, T), jnp.int32).at[0, :20].set(0)  # padding queries
    kv_segments = jnp.ones((B, S), jnp.int32).at[1, :30].set(0)  # empty cache slots
    mask = attention.attention_mask(q_segments, 50 + jnp.arange(T), kv_segments, jnp.arange(S))
    return q, k, v, mask


def test_blocked_attention_equals_the_full_score_reference_with_gradients():
    q, k, v, mask = inputs()
    np.testing.assert_allclose(attention.attend(q, k, v, mask),
                               attention.attend_reference(q, k, v, mask), atol=1e-5)

    def grads(fn):
        return jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v, mask) ** 2), argnums=(0, 1, 2))(q, k, v)

    for got, want in zip(grads(attention.attend), grads(attention.attend_reference),
                         strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_query_blocks_are_powers_of_two_within_the_score_bound():
    assert attention.query_block(B, H, T, S) == 128
    assert attention.query_block(B, H, 100, S) == 100  # fits whole: one block
    assert attention.query_block(64 * B, H, T, S) == attention.MIN_QUERY_BLOCK


def test_blocked_attention_needs_a_fraction_of_the_full_score_memory():
    q, k, v, mask = inputs()

    def temp_bytes(fn):
        return jax.jit(fn).lower(q, k, v, mask).compile().memory_analysis().temp_size_in_bytes

    full_scores = B * H * T * S * 4  # one float32 [B, H, T, S] array
    assert temp_bytes(attention.attend_reference) >= full_scores
    assert temp_bytes(attention.attend) < full_scores / 2


def packed_self_attention(length=256):
    """q/k/v over one packed sequence of slots per row (T == S), segments of uneven length."""
    k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
    q = jax.random.normal(k1, (B, length, H, D))
    k, v = jax.random.normal(k2, (B, length, K, D)), jax.random.normal(k3, (B, length, K, D))
    cut = jnp.arange(length)
    segments = jnp.stack([1 + (cut >= 100) + (cut >= 190), jnp.where(cut < length - 9, 1, 0)])
    slots = jnp.arange(length)
    return q, k, v, attention.attention_mask(segments, slots, segments, slots)


@pytest.mark.parametrize("bound", ["default", "small"])
def test_causal_blocks_equal_the_full_self_attention_with_gradients(monkeypatch, bound):
    if bound == "default":
        monkeypatch.setattr(attention, "ATTENTION_SCORE_BYTES", 2**28)
    q, k, v, mask = packed_self_attention()
    assert len(attention.causal_blocks(B, H, 256)) > 1
    valid = jnp.any(mask, axis=-1)[:, :, None, None]  # rows with a key to attend
    got, want = (jnp.where(valid, fn(q, k, v, mask), 0)
                 for fn in (attention.attend, attention.attend_reference))
    np.testing.assert_allclose(got, want, atol=1e-5)

    def grads(fn):
        loss = lambda q, k, v: jnp.sum(jnp.where(valid, fn(q, k, v, mask), 0) ** 2)  # noqa: E731
        return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

    for got, want in zip(grads(attention.attend), grads(attention.attend_reference),
                         strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_causal_blocks_split_the_queries_within_the_bound_and_cap_their_number(monkeypatch):
    monkeypatch.setattr(attention, "ATTENTION_SCORE_BYTES", 2**28)
    assert attention.causal_blocks(8, 4, 256) == [(0, 64), (64, 128), (128, 192), (192, 256)]
    assert attention.causal_blocks(1, 1, 30) == [(0, 16), (16, 30)]  # at least 16 queries
    assert attention.causal_blocks(1, 1, 16) == [(0, 16)]
    monkeypatch.setattr(attention, "ATTENTION_SCORE_BYTES", 4 * 32 * 4096)
    assert attention.query_block(1, 1, 4096, 4096) == 32
    assert attention.causal_blocks(1, 1, 4096) == []  # 128 blocks of 32: the scan instead


def test_causal_blocks_skip_the_score_work_above_the_diagonal(monkeypatch):
    monkeypatch.setattr(attention, "ATTENTION_SCORE_BYTES", 2**28)
    q, k, v, mask = packed_self_attention()

    def flops(fn):
        return jax.jit(fn).lower(q, k, v, mask).compile().cost_analysis()["flops"]

    ratio = flops(attention.attend) / flops(attention.attend_reference)
    assert 0.55 < ratio < 0.7  # 4 blocks: 10 of 16 block pairs, 62.5% of the work
