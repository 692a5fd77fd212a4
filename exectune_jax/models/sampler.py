"""Batched generation with a KV cache: one jitted prefill, one jitted decode loop.

Prompts are left-padded to a shared length so every row writes the same cache slot at each
step; positions are counted per row from its first real token, so padding never changes what
a prompt produces. Prompt length, batch size and the number of new tokens are rounded up to
powers of two, so a run with varied prompts compiles only a handful of shapes; temperature,
top-p and top-k are traced values and never trigger a recompile.

Stopping: a row stops at any stop token id, or when its last generated tokens spell one of the
stop strings' token sequences (checked inside the loop, so the device stops early). A model may
also write a stop string with different tokens; with a tokenizer, the host then cuts the
output at the first token that completes the string, so the result is the same either way.

Log-probs are those of the distribution each token was drawn from: the logits divided by the
temperature, then top-k/top-p filtered and renormalised (`sampling_logits`). That is the policy
an RL update's importance ratio divides by; train/grpo_loss.py recomputes the same distribution.
Greedy decoding (temperature 0) draws from no distribution: its log-probs are the model's own at
temperature 1 (filtered the same way).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from exectune_jax import parallel
from exectune_jax.errors import UserError
from exectune_jax.models.transformer import Transformer, init_cache

MIN_BUCKET = 16
_NO_TOKEN = -2  # history filler that never matches a stop sequence
_WILDCARD = -1  # left padding of a stop sequence: matches anything


@dataclass(frozen=True)
class SampleOutput:
    """One entry per prompt, in prompt order."""

    tokens: list[list[int]]  # generated ids; a stop token or stop string's tokens included
    logprobs: list[np.ndarray]  # float32, log p(token | prefix) of each generated token
    finished: np.ndarray  # bool: stopped by a stop token/string, False when max_new_tokens ran out
    lengths: np.ndarray  # int: len(tokens[i])
    texts: list[str] | None = None  # decoded (special tokens skipped) when a tokenizer was given


def generate(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    stop_token_ids: Sequence[int] | None = None,
    stop_strings: Sequence[str] = (),
    tokenizer=None,
    rng: jax.Array | None = None,
) -> SampleOutput:
    """Samples up to `max_new_tokens` tokens after each prompt.

    temperature 0 is greedy. top_k 0 and top_p 1 disable those filters. `stop_token_ids`
    defaults to the model config's EOS ids (pass () for none). `stop_strings` need a tokenizer.
    """
    _check_arguments(model, prompts, max_new_tokens, temperature, top_p, top_k, stop_strings,
                     tokenizer, rng)
    cfg = model.cfg
    stop_token_ids = cfg.eos_token_ids if stop_token_ids is None else tuple(stop_token_ids)
    stop_seqs = stop_sequences(stop_token_ids, stop_strings, tokenizer)
    pad_id = cfg.pad_token_id if cfg.pad_token_id is not None else 0
    tokens, positions, segments = left_pad(prompts, pad_id)
    gen_len = _bucket(max_new_tokens)

    graphdef, state = nnx.split(model)
    tokens, positions, segments = _on_model_mesh(state, (tokens, positions, segments))
    logits, cache = _prefill(
        graphdef, state, tokens, positions, segments, cache_len=tokens.shape[1] + gen_len
    )
    next_positions = positions[:, -1] + 1
    out_tokens, out_logprobs, lengths, finished, _ = _decode(
        graphdef,
        state,
        cache,
        logits,
        next_positions,
        rng if rng is not None else jax.random.key(0),
        jnp.int32(max_new_tokens),
        jnp.float32(temperature),
        jnp.float32(top_p),
        jnp.int32(top_k),
        jnp.asarray(stop_seqs),
        pad_id=pad_id,
        gen_len=gen_len,
        filtered=bool(top_k > 0 or top_p < 1.0),
    )
    n = len(prompts)
    out_tokens, out_logprobs, lengths, finished = jax.device_get(
        (out_tokens[:n], out_logprobs[:n], lengths[:n], finished[:n])
    )
    rows = [list(map(int, out_tokens[i, : lengths[i]])) for i in range(n)]
    logprobs = [np.asarray(out_logprobs[i, : lengths[i]], np.float32) for i in range(n)]
    finished = np.array(finished, bool)
    texts = None
    if tokenizer is not None:
        rows, texts = _cut_at_stop_strings(rows, finished, stop_strings, tokenizer)
        logprobs = [lp[: len(r)] for lp, r in zip(logprobs, rows, strict=True)]
    return SampleOutput(
        tokens=rows,
        logprobs=logprobs,
        finished=finished,
        lengths=np.array([len(r) for r in rows], np.int32),
        texts=texts,
    )


def _on_model_mesh(state, arrays):
    """Splits the batch over the data axes when the model lives on a mesh; else leaves it.

    Without this every device would decode the whole batch; with it the prompts, the cache and
    the decode loop are sharded like a training batch.
    """
    sharding = jax.tree.leaves(state)[0].sharding
    if not isinstance(sharding, NamedSharding) or sharding.mesh.size == 1:
        return tuple(jnp.asarray(a) for a in arrays)
    return tuple(
        jax.device_put(a, parallel.logical_to_sharding(("batch", None), sharding.mesh, a.shape))
        for a in arrays
    )


def _check_arguments(model, prompts, max_new_tokens, temperature, top_p, top_k, stop_strings,
                     tokenizer, rng):
    if not prompts:
        raise UserError("generate: prompts is empty; pass at least one prompt")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise UserError(f"generate: prompt {i} has no tokens")
        if min(p) < 0 or max(p) >= model.cfg.vocab_size:
            raise UserError(
                f"generate: prompt {i} has token ids outside [0, {model.cfg.vocab_size})"
            )
    if max_new_tokens < 1:
        raise UserError(f"generate: max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
        raise UserError(
            f"generate: need temperature >= 0, 0 < top_p <= 1, top_k >= 0; got "
            f"temperature={temperature}, top_p={top_p}, top_k={top_k}"
        )
    if stop_strings and tokenizer is None:
        raise UserError("generate: stop_strings need the tokenizer that encodes the prompts")
    if temperature > 0 and rng is None:
        raise UserError("generate: sampling (temperature > 0) needs rng=jax.random.key(...)")


# ---------------------------------------------------------------------------------------------
# Host-side preparation


def _bucket(n: int) -> int:
    """Smallest power of two >= n (at least MIN_BUCKET): bounds the number of compiled shapes."""
    return max(MIN_BUCKET, 1 << (n - 1).bit_length())


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int):
    """tokens, positions, segment ids [B, P], rows and length bucketed, prompts right-aligned.

    Rows added to fill the batch bucket hold a single pad token; their output is dropped.
    """
    rows = 1 << (len(prompts) - 1).bit_length()
    width = _bucket(max(len(p) for p in prompts))
    tokens = np.full((rows, width), pad_id, np.int32)
    segments = np.zeros((rows, width), np.int32)
    lengths = np.ones(rows, np.int64)
    for i, p in enumerate(prompts):
        lengths[i] = len(p)
        tokens[i, width - len(p):] = p
    segments[np.arange(width)[None, :] >= width - lengths[:, None]] = 1
    positions = np.maximum(np.arange(width)[None, :] - (width - lengths[:, None]), 0)
    return tokens, positions.astype(np.int32), segments


def stop_sequences(
    stop_token_ids: Sequence[int], stop_strings: Sequence[str], tokenizer
) -> np.ndarray:
    """[N, M] int32 stop sequences, right-aligned, left-filled with a wildcard."""
    seqs = [[int(t)] for t in stop_token_ids]
    for s in stop_strings:
        ids = tokenizer.encode(s, add_special_tokens=False)
        if not ids:
            raise UserError(f"generate: stop string {s!r} encodes to no tokens")
        seqs.append(list(ids))
    width = max((len(s) for s in seqs), default=1)
    out = np.full((len(seqs), width), _WILDCARD, np.int32)
    for i, s in enumerate(seqs):
        out[i, width - len(s):] = s
    return out


def _cut_at_stop_strings(rows, finished, stop_strings, tokenizer):
    """Cuts each row after the first token that completes a stop string; decodes the rows."""
    decode = functools.partial(tokenizer.decode, skip_special_tokens=True)
    texts = []
    for i, row in enumerate(rows):
        end = _first_stop_end(row, stop_strings, decode)
        if end is not None:
            rows[i] = row = row[:end]
            finished[i] = True
        text = decode(row)
        hits = [text.find(s) + len(s) for s in stop_strings if s in text]
        texts.append(text[: min(hits)] if hits else text)
    return rows, texts


def _first_stop_end(row, stop_strings, decode) -> int | None:
    """Smallest k such that decode(row[:k]) contains a stop string (None if none does)."""
    if not stop_strings or not any(s in decode(row) for s in stop_strings):
        return None
    lo, hi = 1, len(row)
    while lo < hi:
        mid = (lo + hi) // 2
        if any(s in decode(row[:mid]) for s in stop_strings):
            hi = mid
        else:
            lo = mid + 1
    return lo


# ---------------------------------------------------------------------------------------------
# Pure sampling math


def filter_logits(logits: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """Keeps the top_k largest logits (0 = all), then the smallest set with mass >= top_p."""
    vocab = logits.shape[-1]
    ordered = -jnp.sort(-logits, axis=-1)
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
    ranks = jnp.arange(vocab)
    ordered = jnp.where(ranks < k, ordered, -jnp.inf)
    probs = jax.nn.softmax(ordered, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    kept = jnp.sum((mass_before < top_p) & (ranks < k), axis=-1, keepdims=True)
    threshold = jnp.take_along_axis(ordered, kept - 1, axis=-1)
    return jnp.where(logits >= threshold, logits, -jnp.inf)


def first_max(x: jax.Array) -> jax.Array:
    """argmax over the last axis (the first index of the largest value; the last index for a
    row of NaNs) as two plain reductions: XLA:CPU runs argmax's paired value-index reduction
    several times slower, and in the decode loop that was a fifth of each step."""
    last = x.shape[-1] - 1
    top = jnp.max(x, axis=-1, keepdims=True)
    return jnp.min(jnp.where(x == top, jnp.arange(x.shape[-1]), last), axis=-1)


def sampling_logits(logits, temperature, top_p, top_k, *, filtered: bool) -> jax.Array:
    """Logits [B,V] of the distribution a token is drawn from: logits / temperature, then the
    top-k/top-p filter (removed tokens at -inf). Temperature 0 divides by 1 (greedy)."""
    scaled = logits / jnp.where(temperature > 0, temperature, 1.0)
    return filter_logits(scaled, top_k, top_p) if filtered else scaled


def draw(scaled, key, temperature) -> jax.Array:
    """One token per row from sampling logits [B,V]; temperature 0 is argmax, without a random
    draw. Sampling is the Gumbel-max draw of `jax.random.categorical` (the same key gives the
    same tokens); which branch runs is decided on device, so temperature is never compiled in."""

    def sampled(z):
        return first_max(z + jax.random.gumbel(key, z.shape, z.dtype))

    return jax.lax.cond(temperature > 0, sampled, first_max, scaled).astype(jnp.int32)


def sample_tokens(logits, key, temperature, top_p, top_k, *, filtered: bool) -> jax.Array:
    """One token per row from raw logits [B,V] (`sampling_logits`, then `draw`)."""
    scaled = sampling_logits(logits, temperature, top_p, top_k, filtered=filtered)
    return draw(scaled, key, temperature)


def ends_with_stop(history: jax.Array, stop_seqs: jax.Array) -> jax.Array:
    """[B] bool: the last tokens of history [B,M] equal one of stop_seqs [N,M] (wildcard-padded)."""
    match = (stop_seqs[None] == _WILDCARD) | (history[:, None, :] == stop_seqs[None])
    return jnp.any(jnp.all(match, axis=-1), axis=-1)


# ---------------------------------------------------------------------------------------------
# Device programs


@functools.partial(jax.jit, static_argnames=("graphdef", "cache_len"))
def _prefill(graphdef, state, tokens, positions, segments, *, cache_len):
    """Runs the prompts through the model; returns last-position logits and the filled cache.

    Only the last position goes through the head: [B, prompt, vocab] logits are never built.
    """
    model = nnx.merge(graphdef, state)
    cache = init_cache(model.cfg, tokens.shape[0], cache_len, dtype=model.dtype)
    x, cache = model.hidden(tokens, positions, segment_ids=segments, cache=cache)
    return model.logits(x[:, -1]), cache


@functools.partial(
    jax.jit,
    static_argnames=("graphdef", "pad_id", "gen_len", "filtered"),
    donate_argnames=("cache",),
)
def _decode(
    graphdef, state, cache, logits, positions, rng, max_new, temperature, top_p, top_k,
    stop_seqs, *, pad_id, gen_len, filtered,
):
    """Samples, records and feeds back one token per step until all rows stop or max_new.

    The layers' weights are sliced out of their stacks once, before the loop, not per step.
    """
    model = nnx.merge(graphdef, state)
    layers = model.layer_weights()
    batch = logits.shape[0]
    init = dict(
        step=jnp.int32(0),
        cache=cache,
        logits=logits,
        positions=positions,
        tokens=jnp.full((batch, gen_len), pad_id, jnp.int32),
        logprobs=jnp.zeros((batch, gen_len), jnp.float32),
        lengths=jnp.zeros((batch,), jnp.int32),
        done=jnp.zeros((batch,), bool),
        history=jnp.full((batch, stop_seqs.shape[1]), _NO_TOKEN, jnp.int32),
    )

    def running(s):
        return (s["step"] < max_new) & ~jnp.all(s["done"])

    def step(s):
        key = jax.random.fold_in(rng, s["step"])
        scaled = sampling_logits(s["logits"], temperature, top_p, top_k, filtered=filtered)
        token = draw(scaled, key, temperature)
        logprob = jnp.take_along_axis(jax.nn.log_softmax(scaled, axis=-1), token[:, None],
                                      axis=-1)[:, 0]
        live = ~s["done"]
        token = jnp.where(live, token, pad_id)
        history = jnp.concatenate([s["history"][:, 1:], token[:, None]], axis=1)
        x, cache = model.hidden(token[:, None], s["positions"][:, None], cache=s["cache"],
                                layers=layers)
        return dict(
            step=s["step"] + 1,
            cache=cache,
            logits=model.logits(x[:, -1]),
            positions=s["positions"] + 1,
            tokens=s["tokens"].at[:, s["step"]].set(token),
            logprobs=s["logprobs"].at[:, s["step"]].set(jnp.where(live, logprob, 0.0)),
            lengths=jnp.where(live, s["step"] + 1, s["lengths"]),
            done=s["done"] | (live & ends_with_stop(history, stop_seqs)),
            history=history,
        )

    final = jax.lax.while_loop(running, step, init)
    # Returning the cache lets XLA reuse the donated input buffers for it.
    return final["tokens"], final["logprobs"], final["lengths"], final["done"], final["cache"]
