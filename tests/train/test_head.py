import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from exectune_jax.train.head import chunked_head

B, T, E, V = 2, 10, 8, 37


@pytest.fixture(scope="module")
def inputs():
    keys = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(keys[0], (B, T, E))
    head = jax.random.normal(keys[1], (E, V))
    targets = jax.random.randint(keys[2], (B, T), 0, V)
    weights = jax.random.normal(keys[3], (B, T))
    return x, head, targets, weights


def full_logits_stats(x, head, targets):
    logits = jnp.einsum("bte,ev->btv", x, head)
    logp = -optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    probs = jax.nn.softmax(logits)
    return logp, -jnp.sum(probs * jax.nn.log_softmax(logits), axis=-1)


@pytest.mark.parametrize("chunk", [0, 1, 3, 10, 64])
def test_chunked_log_probs_and_entropy_equal_those_of_full_logits(inputs, chunk):
    x, head, targets, _ = inputs
    logp, entropy = chunked_head(x, head, targets, chunk)
    want_logp, want_entropy = full_logits_stats(x, head, targets)
    assert logp.shape == entropy.shape == (B, T)
    np.testing.assert_allclose(logp, want_logp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(entropy, want_entropy, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk", [1, 3, 4])
def test_chunked_gradients_equal_unchunked_ones(inputs, chunk):
    x, head, targets, weights = inputs

    def loss(chunk):
        return lambda x, head: jnp.sum(chunked_head(x, head, targets, chunk)[0] * weights)

    whole = jax.grad(loss(0), argnums=(0, 1))(x, head)
    chunked = jax.grad(loss(chunk), argnums=(0, 1))(x, head)
    reference = jax.grad(
        lambda x, head: jnp.sum(full_logits_stats(x, head, targets)[0] * weights), argnums=(0, 1)
    )(x, head)
    for got, base, ref in zip(chunked, whole, reference, strict=True):
        np.testing.assert_allclose(got, base, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_entropy_carries_no_gradient(inputs):
    x, head, targets, _ = inputs
    grads = jax.grad(lambda x: jnp.sum(chunked_head(x, head, targets, 3)[1]))(x)
    assert not np.any(np.asarray(grads))
