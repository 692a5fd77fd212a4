"""Log-probs of the distribution actually sampled from (logits / temperature, renormalised over
the top-p nucleus), checked against numpy: what the sampler records, what the loss recomputes,
and that the two agree, so a batch sampled at rl.temperature != 1 or rl.top_p < 1 is on-policy."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from exectune_jax.models import sampler
from exectune_jax.models.architecture import ModelConfig
from exectune_jax.models.transformer import Transformer
from exectune_jax.train import grpo_loss, rl_step
from exectune_jax.train.head import chunked_head

T, TOP_P = 0.7, 0.8
TINY = ModelConfig(model_type="qwen3", vocab_size=64, hidden_size=64, intermediate_size=128,
                   num_layers=2, num_heads=4, num_kv_heads=2, eos_token_id=1)


def reference_logprobs(logits, temperature: float, top_p: float) -> np.ndarray:
    """numpy: log softmax(logits / T) renormalised over the most likely tokens whose mass before
    each is under top_p ([..., V]; -inf outside the nucleus)."""
    z = np.asarray(logits, np.float64) / temperature
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    order = np.argsort(-p, axis=-1, kind="stable")
    ranked = np.take_along_axis(p, order, -1)
    keep = np.zeros(p.shape, bool)
    np.put_along_axis(keep, order, np.cumsum(ranked, -1) - ranked < top_p, -1)
    q = np.where(keep, p, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(q / q.sum(-1, keepdims=True))


HAND = jnp.array([[[2.0, 1.0, 0.5, -1.0, 0.0]]])


def test_token_logprobs_are_those_of_the_tempered_nucleus_on_hand_logits():
    # z / 0.7 -> p = 0.7002, 0.1678, 0.0821, 0.0096, 0.0402; mass before: 0, 0.70, 0.87 -> the
    # nucleus at 0.8 is tokens 0 and 1, renormalised: log(0.7002 / 0.8680), log(0.1678 / 0.8680)
    got = [float(grpo_loss.token_logprobs(HAND, jnp.array([[t]]), T, TOP_P)[0, 0]) for t in (0, 1)]
    np.testing.assert_allclose(got, [-0.214830, -1.643401], atol=1e-5)
    np.testing.assert_allclose(got, reference_logprobs(HAND, T, TOP_P)[0, 0, :2], atol=1e-6)
    # token 2 fell outside the nucleus: counted in with it, finite: log(0.0821 / 0.9502)
    outside = grpo_loss.token_logprobs(HAND, jnp.array([[2]]), T, TOP_P)
    assert float(outside[0, 0]) == pytest.approx(-2.448112, abs=1e-5)
    grad = jax.grad(lambda z: grpo_loss.token_logprobs(z, jnp.array([[2]]), T, TOP_P).sum())(HAND)
    assert np.isfinite(np.asarray(grad)).all()
    # -(0.8068 ln 0.8068 + 0.1932 ln 0.1932)
    assert float(grpo_loss.token_entropy(HAND, T, TOP_P)[0, 0]) == pytest.approx(0.491003, abs=1e-5)


def test_the_chunked_head_gives_the_same_sampling_log_probs_as_full_logits():
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (2, 7, 8))
    head = jax.random.normal(keys[1], (8, 11))
    targets = jax.random.randint(keys[2], (2, 7), 0, 11)
    logits = jnp.einsum("bte,ev->btv", x, head)
    logp, entropy = chunked_head(x, head, targets, 3, T, TOP_P)
    np.testing.assert_allclose(logp, grpo_loss.token_logprobs(logits, targets, T, TOP_P), atol=1e-5)
    np.testing.assert_allclose(entropy, grpo_loss.token_entropy(logits, T, TOP_P), atol=1e-5)


@pytest.fixture(scope="module")
def sampled():
    model = Transformer(TINY, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    prompts = [rng.integers(2, 64, n).tolist() for n in (3, 4, 2, 5)]
    out = sampler.generate(model, prompts, max_new_tokens=8, temperature=T, top_p=TOP_P,
                           rng=jax.random.key(1), stop_token_ids=())
    return model, prompts, out


def test_the_sampler_records_the_log_probs_of_the_distribution_it_drew_from(sampled):
    model, prompts, out = sampled
    for prompt, tokens, logprobs in zip(prompts, out.tokens, out.logprobs, strict=True):
        seq = np.array([prompt + tokens])
        logits = np.asarray(model(seq, np.arange(seq.shape[1])[None]))[0, len(prompt) - 1: -1]
        want = reference_logprobs(logits, T, TOP_P)[np.arange(len(tokens)), tokens]
        assert np.isfinite(want).all()  # every drawn token is inside its nucleus
        np.testing.assert_allclose(logprobs, want, atol=1e-4)
        model_own = jax.nn.log_softmax(logits)[np.arange(len(tokens)), tokens]
        assert np.abs(np.asarray(model_own) - want).max() > 0.05  # what was recorded before


def test_the_loss_recomputes_the_sampler_log_probs_so_a_fresh_batch_has_ratio_one(sampled):
    model, prompts, out = sampled
    graphdef, params = nnx.split(model)
    layout = rl_step.Layout(rows=4, micro=2, seq_len=16)
    batch = rl_step.build_batch(prompts, out.tokens, out.logprobs, np.zeros(4), np.ones(4, bool),
                                layout)
    mask = batch["mask"] > 0
    recomputed = np.asarray(rl_step.make_logprob_fn(graphdef, temperature=T, top_p=TOP_P)(params, batch))
    np.testing.assert_allclose(recomputed[mask], batch["old_logp"][mask], atol=1e-5)
    at_one = np.asarray(rl_step.make_logprob_fn(graphdef)(params, batch))
    assert np.abs(at_one[mask] - batch["old_logp"][mask]).max() > 0.05
    tx = optax.sgd(0.0)
    step = rl_step.make_train_step(graphdef, tx, clip_eps=0.2, beta=0.0, temperature=T, top_p=TOP_P)
    own = jax.tree.map(jnp.copy, params)  # the step donates its params
    _, _, stats = step(own, tx.init(own), batch, recomputed)
    assert float(stats["ratio"]) == pytest.approx(1.0, abs=1e-5)
