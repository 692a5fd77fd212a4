"""The device side of GRPO: batch layout, log-probs under a set of weights, the update step.

The weights live as an nnx.State (`params`) next to the model's graph definition, so the same
pure functions serve the live policy, the frozen reference and `exectune plan`, which compiles
them from abstract shapes only. A batch is laid out on the host as micro-batches
[n_micro, micro, L] (each row: prompt, then completion, then padding), so the update scans over
micro-batches with a bounded activation footprint and the per-row dimension is split over the
mesh's batch axes.

Log-probs are those of the distribution sampled from (logits / rl.temperature, renormalised over
the rl.top_p nucleus: train/grpo_loss.py), matching what the sampler records, so on-policy
ratios start at exactly 1; the reference's are taken the same way, so the KL penalty compares
the two sampling distributions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from exectune_jax import parallel
from exectune_jax.errors import UserError
from exectune_jax.train import grpo_loss, head

BATCH_KEYS = ("tokens", "positions", "mask", "old_logp", "advantages")


@dataclass(frozen=True)
class Layout:
    """Static shape of every RL batch: one compiled train step for the whole run."""

    rows: int  # P * G sequences
    micro: int  # rows per micro-batch
    seq_len: int  # L = prompt + completion budget

    @property
    def n_micro(self) -> int:
        return self.rows // self.micro


def make_layout(rows: int, micro_batch: int, seq_len: int) -> Layout:
    micro = rows if micro_batch <= 0 else micro_batch
    if rows % micro:
        raise UserError(
            f"config: rl.micro_batch={micro_batch} must divide rl.prompts_per_step * "
            f"rl.group_size = {rows}"
        )
    return Layout(rows=rows, micro=micro, seq_len=seq_len)


def build_batch(
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    old_logprobs: Sequence[np.ndarray],
    advantages: np.ndarray,
    included: np.ndarray,
    layout: Layout,
    pad_id: int = 0,
) -> dict[str, np.ndarray]:
    """Host arrays [n_micro, micro, ...]; `included` False rows (failed calls) get no loss at all.

    mask[t] = 1 when token t+1 is a completion token of an included row; old_logp[t] is the
    sampler's log-prob of token t+1.
    """
    n, L = layout.rows, layout.seq_len
    if len(prompts) != n:
        raise ValueError(f"batch has {len(prompts)} rows, layout expects {n}")
    tokens = np.full((n, L), pad_id, np.int32)
    mask = np.zeros((n, L - 1), np.float32)
    old = np.zeros((n, L - 1), np.float32)
    for i, (p, c, lp) in enumerate(zip(prompts, completions, old_logprobs, strict=True)):
        if len(p) + len(c) > L:
            raise UserError(
                f"a prompt of {len(p)} tokens plus {len(c)} new tokens exceeds "
                f"model.max_seq_len={L}; raise model.max_seq_len or lower rl.max_new_tokens"
            )
        tokens[i, : len(p)] = p
        tokens[i, len(p): len(p) + len(c)] = c
        span = slice(len(p) - 1, len(p) - 1 + len(c))
        old[i, span] = np.asarray(lp, np.float32)[: len(c)]
        mask[i, span] = float(included[i])
    positions = np.broadcast_to(np.arange(L, dtype=np.int32), (n, L))
    flat = {
        "tokens": tokens,
        "positions": positions,
        "mask": mask,
        "old_logp": old,
        "advantages": np.asarray(advantages, np.float32).reshape(n),
    }
    return {k: v.reshape(layout.n_micro, layout.micro, *v.shape[1:]) for k, v in flat.items()}


def batch_shardings(mesh: Mesh, layout: Layout) -> dict[str, NamedSharding]:
    """Micro-batch rows split over the mesh's batch axes (replicated if they do not divide)."""
    spec = parallel.fit_spec(
        PartitionSpec(None, parallel.BATCH_AXES), (layout.n_micro, layout.micro), dict(mesh.shape)
    )
    return dict.fromkeys(BATCH_KEYS, NamedSharding(mesh, spec))


def tree_shardings(tree: Any, mesh: Mesh) -> Any:
    """Shardings for any pytree holding nnx Variables (params, optimizer state) on `mesh`.

    Variables follow their logical annotations; plain leaves (step counters) are replicated.
    """
    replicated = NamedSharding(mesh, PartitionSpec())

    def one(x: Any) -> Any:
        if isinstance(x, nnx.Variable):
            return parallel.state_shardings(x, mesh)
        return replicated

    return jax.tree.map(one, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def cast_state(params: Any, dtype: Any) -> Any:
    """A copy of the weights in `dtype` (the frozen reference only ever runs forward)."""
    return jax.tree.map(lambda x: x.astype(dtype), params)


# ---------------------------------------------------------------------------------------------
# Device programs


def _next_token_stats(graphdef, params, micro, head_chunk, temperature, top_p):
    """(log-prob, entropy) [micro, L-1] of each next token, the head run in chunks."""
    model = nnx.merge(graphdef, params)
    x, _ = model.hidden(micro["tokens"], micro["positions"])
    return head.chunked_head(x[:, :-1], model.head(), micro["tokens"][:, 1:], head_chunk,
                             temperature, top_p)


def make_logprob_fn(graphdef: nnx.GraphDef, prepare: Any = None, *, head_chunk: int = 0,
                    temperature: float = 1.0, top_p: float = 1.0):
    """jit fn(params, batch) -> log-probs [n_micro, micro, L-1] of each next token.

    `prepare` maps the weights inside the program first (lora.without_adapters: the frozen
    base as the reference, computed from the policy's own arrays instead of a second copy).
    `head_chunk`: positions per step of the output head (train/head.py; 0 = all at once).
    `temperature`, `top_p`: the sampler's (rl.temperature, rl.top_p).
    """

    def logprobs(params, batch):
        if prepare is not None:
            params = prepare(params)

        def one(micro):
            return _next_token_stats(graphdef, params, micro, head_chunk, temperature, top_p)[0]

        return jax.lax.map(one, {k: batch[k] for k in ("tokens", "positions")})

    return jax.jit(logprobs)


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, *,
                    clip_eps: float, beta: float, wrt: Any = nnx.Param, head_chunk: int = 0,
                    temperature: float = 1.0, top_p: float = 1.0):
    """jit fn(params, opt_state, batch, ref_logp) -> (params, opt_state, stats).

    Log-probs and entropy are of the distribution sampled at `temperature` and `top_p`
    (rl.temperature, rl.top_p), like the sampler's `old_logp` and the reference's `ref_logp`.

    Only the `wrt` part of params trains (LoRA: the adapters); `opt_state` is tx's state for
    that part (`tx.init(nnx.filter_state(params, wrt))`), the rest passes through unchanged.

    Gradients are summed over micro-batches of a loss already divided by the batch's total
    number of completion tokens, so the result equals one full-batch token-mean step. A batch
    without any completion token (every call failed) leaves params and optimizer untouched.
    """

    def loss_fn(params, micro, ref_logp, n_tokens):
        logp, entropy = _next_token_stats(graphdef, params, micro, head_chunk, temperature,
                                          top_p)
        per_token, diag = grpo_loss.grpo_token_loss(
            logp, micro["old_logp"], ref_logp, micro["advantages"], clip_eps=clip_eps, beta=beta
        )
        mask = micro["mask"]
        sums = {
            "kl": jnp.sum(diag["kl"] * mask),
            "clip_frac": jnp.sum(diag["clip_frac"] * mask),
            "entropy": jnp.sum(entropy * mask),
            "ratio": jnp.sum(jnp.exp(jax.lax.stop_gradient(logp) - micro["old_logp"]) * mask),
        }
        return jnp.sum(per_token * mask) / n_tokens, sums

    def step(params, opt_state, batch, ref_logp):
        n_tokens = jnp.maximum(jnp.sum(batch["mask"]), 1.0)
        trained, frozen = nnx.split_state(params, wrt, ...)
        zeros = jax.tree.map(jnp.zeros_like, trained)

        def trained_loss(trained, micro, ref, n_tokens):
            return loss_fn(nnx.merge_state(frozen, trained), micro, ref, n_tokens)

        def accumulate(carry, xs):
            grads, loss, sums = carry
            micro, ref = xs
            (l, s), g = jax.value_and_grad(trained_loss, has_aux=True)(trained, micro, ref,
                                                                       n_tokens)
            sums = jax.tree.map(jnp.add, sums, s)
            return (jax.tree.map(jnp.add, grads, g), loss + l, sums), None

        init_sums = dict.fromkeys(("kl", "clip_frac", "entropy", "ratio"), jnp.float32(0.0))
        (grads, loss, sums), _ = jax.lax.scan(
            accumulate, (zeros, jnp.float32(0.0), init_sums), (batch, ref_logp)
        )
        updates, new_opt = tx.update(grads, opt_state, trained)
        new_trained = optax.apply_updates(trained, updates)
        has_tokens = jnp.sum(batch["mask"]) > 0
        keep = lambda new, old: jax.tree.map(  # noqa: E731
            lambda a, b: jnp.where(has_tokens, a, b), new, old
        )
        stats = {k: v / n_tokens for k, v in sums.items()}
        stats.update(loss=loss, grad_norm=optax.tree.norm(grads), tokens=jnp.sum(batch["mask"]))
        new_params = nnx.merge_state(frozen, keep(new_trained, trained))
        return new_params, keep(new_opt, opt_state), stats

    return jax.jit(step, donate_argnums=(0, 1))
