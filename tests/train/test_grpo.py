import jax
import jax.numpy as jnp
import numpy as np
import pytest

from exectune_jax.train import grpo_loss
from exectune_jax.train.advantages import group_advantages, group_rewards


# ---------------------------------------------------------------------------------------------
# Advantages


def test_group_advantages_normalise_within_each_group():
    rewards = np.array([[1.0, 0.0, 1.0, 0.0], [2.0, 2.0, 2.0, 5.0]])
    adv = group_advantages(rewards, np.ones_like(rewards, bool), eps=0.0)
    np.testing.assert_allclose(adv[0], [1, -1, 1, -1], atol=1e-6)
    # mean 2.75, std sqrt(1.6875) = 1.299
    np.testing.assert_allclose(adv[1], [-0.57735, -0.57735, -0.57735, 1.73205], atol=1e-5)


def test_failed_samples_leave_the_baseline_and_get_no_advantage():
    rewards = np.array([[1.0, 0.0, 123.0, 0.0]])
    valid = np.array([[True, True, False, True]])
    adv = group_advantages(rewards, valid, eps=0.0)
    # valid rewards 1, 0, 0: mean 1/3, std sqrt(2)/3
    np.testing.assert_allclose(adv[0], [1.41421, -0.70711, 0.0, -0.70711], atol=1e-5)


def test_uninformative_groups_get_zero_advantage():
    rewards = np.array([[0.5, 0.5, 0.5], [1.0, 0.0, 0.0]])
    valid = np.array([[True, True, True], [True, False, False]])
    assert not group_advantages(rewards, valid).any()


def test_group_rewards_marks_failed_calls_invalid():
    values, valid = group_rewards([1.0, None, 0.0, 2.0], group_size=2)
    np.testing.assert_array_equal(valid, [[True, False], [True, True]])
    np.testing.assert_array_equal(values, [[1.0, 0.0], [0.0, 2.0]])
    with pytest.raises(ValueError):
        group_rewards([1.0, 2.0, 3.0], group_size=2)


# ---------------------------------------------------------------------------------------------
# Loss pieces


def test_token_logprobs_match_log_softmax_with_temperature():
    logits = jnp.array([[[2.0, 0.0, 0.0]]])
    lp = grpo_loss.token_logprobs(logits, jnp.array([[0]]), temperature=2.0)
    # softmax([1, 0, 0])[0] = e / (e + 2)
    assert float(lp[0, 0]) == pytest.approx(np.log(np.e / (np.e + 2)), abs=1e-6)
    uniform = grpo_loss.token_entropy(jnp.zeros((1, 1, 4)))
    assert float(uniform[0, 0]) == pytest.approx(np.log(4), abs=1e-6)


def test_clipped_surrogate_caps_the_ratio_in_the_direction_of_the_advantage():
    old = jnp.zeros((2, 3))
    logp = jnp.log(jnp.array([[1.5, 1.0, 0.5], [1.5, 1.0, 0.5]]))
    adv = jnp.array([1.0, -1.0])
    loss, clipped = grpo_loss.clipped_surrogate(logp, old, adv, clip_eps=0.2)
    # A>0: min(rho, clip(rho)) -> 1.2, 1.0, 0.5 ; A<0: min(-rho, -clip(rho)) -> -1.5, -1.0, -0.8
    np.testing.assert_allclose(loss[0], [-1.2, -1.0, -0.5], atol=1e-6)
    np.testing.assert_allclose(loss[1], [1.5, 1.0, 0.8], atol=1e-6)
    np.testing.assert_array_equal(clipped, [[True, False, False], [False, False, True]])


def test_kl_estimator_is_zero_at_the_reference_and_positive_elsewhere():
    logp = jnp.array([[-1.0, -2.0]])
    np.testing.assert_allclose(grpo_loss.kl_to_reference(logp, logp), 0.0, atol=1e-7)
    kl = grpo_loss.kl_to_reference(jnp.array([[-1.0]]), jnp.array([[-2.0]]))
    assert float(kl[0, 0]) == pytest.approx(np.exp(-1) + 1 - 1)


def test_masked_mean_weighs_each_completion_token_equally():
    x = jnp.array([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
    mask = jnp.array([[1, 1, 0], [1, 0, 0]])
    assert float(grpo_loss.masked_mean(x, mask)) == pytest.approx(2.0)
    assert float(grpo_loss.masked_mean(x, jnp.zeros_like(mask))) == 0.0


def test_on_policy_loss_gradient_is_advantage_weighted_log_likelihood():
    """At rho = 1 and ref = pi the GRPO gradient equals -A * grad log pi (REINFORCE)."""
    old = jnp.array([[-1.2, -0.3]])
    adv = jnp.array([0.7])

    def loss(lp):
        per_token, _ = grpo_loss.grpo_token_loss(lp, old, lp, adv, clip_eps=0.2, beta=0.04)
        return per_token.sum()

    np.testing.assert_allclose(jax.grad(loss)(old), [[-0.7, -0.7]], atol=1e-6)
