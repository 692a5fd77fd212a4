"""The GRPO objective, token by token (symbols as in PAPER.md: epsilon = clip, beta = KL weight).

For completion token t of sample i with advantage A_i, ratio rho = pi(t) / pi_old(t), where
pi_old is the policy that *sampled* the token (its log-probs are recorded at sampling time, so
a batch sampled a step or two ago — bounded staleness — is corrected by the same ratio):

    loss_t = -min(rho * A_i, clip(rho, 1 - eps, 1 + eps) * A_i) + beta * KL_t
    KL_t   = exp(ref - logp) - (ref - logp) - 1           # k3 estimator of KL(pi || ref), >= 0

and the batch loss is the mean over every completion token in the batch (the token-level loss
mask), so long and short strategies weigh each token equally. pi, pi_old and ref are all the
distribution sampled from (logits / rl.temperature, renormalised over the rl.top_p nucleus), so
the ratio of a fresh batch starts at exactly 1 whatever the sampler settings. Everything here is
pure jnp.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from exectune_jax.models.sampler import filter_logits


def nucleus(scaled: jax.Array, top_p: float) -> jax.Array:
    """[..., V] bool: the tokens the sampler's top-p filter keeps from tempered logits (the
    same rule, models/sampler.py `filter_logits`). A selection: it carries no gradient."""
    return jnp.isfinite(filter_logits(jax.lax.stop_gradient(scaled), 0, top_p))


def token_logprobs(logits: jax.Array, targets: jax.Array, temperature: float = 1.0,
                   top_p: float = 1.0) -> jax.Array:
    """log pi(target) of the sampling distribution: logits [B,T,V], targets [B,T] -> [B,T].

    pi is softmax(logits / temperature) renormalised over the top-p nucleus, the distribution
    the sampler drew from (and whose log-probs it recorded). A target outside the current
    nucleus (weights that moved since sampling) is counted in with it, so its log-prob stays
    finite and the clipped ratio, not an infinity, bounds its update.

    Written as logit[target] - logsumexp(logits) rather than through log_softmax, so neither
    the forward nor the backward pass keeps a second [B,T,V] array of log-probs alive.
    """
    scaled = logits.astype(jnp.float32) / temperature
    picked = jnp.take_along_axis(scaled, targets[..., None], axis=-1)[..., 0]
    if top_p < 1.0:
        kept = nucleus(scaled, top_p) | (jnp.arange(scaled.shape[-1]) == targets[..., None])
        scaled = jnp.where(kept, scaled, -jnp.inf)
    return picked - jax.nn.logsumexp(scaled, axis=-1)


def token_entropy(logits: jax.Array, temperature: float = 1.0, top_p: float = 1.0) -> jax.Array:
    """Entropy of the sampling distribution (tempered, top-p renormalised) at each position:
    [B,T,V] -> [B,T].

    H = logsumexp(z) - sum(softmax(z) * z), which XLA fuses into one pass over the logits.
    """
    scaled = logits.astype(jnp.float32) / temperature
    if top_p < 1.0:
        kept = nucleus(scaled, top_p)
        lse = jax.nn.logsumexp(jnp.where(kept, scaled, -jnp.inf), axis=-1)
        probs = jnp.where(kept, jnp.exp(scaled - lse[..., None]), 0.0)
        return lse - jnp.sum(probs * jnp.where(kept, scaled, 0.0), axis=-1)
    lse = jax.nn.logsumexp(scaled, axis=-1)
    return lse - jnp.sum(jnp.exp(scaled - lse[..., None]) * scaled, axis=-1)


def clipped_surrogate(
    logp: jax.Array, old_logp: jax.Array, advantages: jax.Array, clip_eps: float
) -> tuple[jax.Array, jax.Array]:
    """Per-token -min(rho A, clip(rho) A) [B,T] and where the clip was active [B,T] (bool)."""
    ratio = jnp.exp(logp - old_logp)
    adv = advantages[:, None]
    unclipped = ratio * adv
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv
    return -jnp.minimum(unclipped, clipped), clipped < unclipped


def kl_to_reference(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
    """k3 estimator of KL(pi || ref) per token: unbiased, always >= 0, 0 iff logp == ref."""
    d = ref_logp - logp
    return jnp.exp(d) - d - 1.0


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    mask = mask.astype(jnp.float32)
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def grpo_token_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    ref_logp: jax.Array,
    advantages: jax.Array,
    *,
    clip_eps: float,
    beta: float,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Per-token loss [B,T] and per-token diagnostics (kl, clipped) for masked reduction."""
    surrogate, clipped = clipped_surrogate(logp, old_logp, advantages, clip_eps)
    kl = kl_to_reference(logp, ref_logp)
    return surrogate + beta * kl, {"kl": kl, "clip_frac": clipped.astype(jnp.float32)}
