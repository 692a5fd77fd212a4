"""KV-cache generation: same tokens as transformers, exact log-probs, stopping, few compiles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import EOS, VOCAB, char_tokenizer
from flax import nnx
from jax.sharding import PartitionSpec as P

from exectune_jax import parallel
from exectune_jax.errors import UserError
from exectune_jax.models import hf, sampler
from exectune_jax.models.transformer import init_cache

PROMPTS = [list(map(int, np.random.RandomState(i).randint(2, VOCAB, n))) for i, n in
           enumerate((3, 9, 14))]


@pytest.fixture(scope="module")
def llama(hf_checkpoint):
    torch_model, path = hf_checkpoint("llama")
    return torch_model, hf.load(path)[0]


@nnx.jit
def forward(model, tokens, positions, segments, cache):
    return model(tokens, positions, segment_ids=segments, cache=cache)


def full_logits(model, tokens, width=32):
    """Logits of one unpadded sequence; right padding to one width keeps it to one compile."""
    padded = np.zeros((1, width), np.int32)
    padded[0, : len(tokens)] = tokens
    positions = np.arange(width)[None]
    return np.asarray(forward(model, padded, positions, None, None))[0, : len(tokens)]


def test_greedy_equals_transformers_generate_for_prompts_of_different_lengths(llama):
    torch_model, model = llama
    out = sampler.generate(model, PROMPTS, max_new_tokens=12, temperature=0.0)
    for prompt, got in zip(PROMPTS, out.tokens, strict=True):
        with torch.no_grad():
            want = torch_model.generate(
                torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=EOS
            )[0, len(prompt):].tolist()
        assert got == want


def test_cached_logits_equal_full_forward_for_left_padded_rows(llama):
    _, model = llama
    tokens, positions, segments = sampler.left_pad([p[:-2] for p in PROMPTS], pad_id=0)
    cache = init_cache(model.cfg, tokens.shape[0], tokens.shape[1] + 2)
    first, cache = forward(model, tokens, positions, segments, cache)
    steps = [first[:, -1]]
    for j in (2, 1):  # feed the last two prompt tokens one at a time
        nxt = np.array([[p[-j]] for p in PROMPTS] + [[0]] * (tokens.shape[0] - len(PROMPTS)))
        logits, cache = forward(model, nxt, positions[:, -1:] + 3 - j, np.ones_like(nxt), cache)
        steps.append(logits[:, -1])
    for i, p in enumerate(PROMPTS):
        want = full_logits(model, p)[-3:]
        got = np.stack([np.asarray(s[i]) for s in steps])
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_logprobs_are_log_softmax_of_full_forward_at_sampled_tokens(llama):
    _, model = llama
    out = sampler.generate(model, PROMPTS, max_new_tokens=10, temperature=1.0,
                           rng=jax.random.key(3))
    for prompt, tokens, logprobs in zip(PROMPTS, out.tokens, out.logprobs, strict=True):
        logits = full_logits(model, prompt + tokens)[len(prompt) - 1: -1]
        want = jax.nn.log_softmax(logits)[np.arange(len(tokens)), tokens]
        np.testing.assert_allclose(logprobs, want, atol=1e-4)


def test_top_k_1_equals_greedy(llama):
    _, model = llama
    greedy = sampler.generate(model, PROMPTS, max_new_tokens=10, temperature=0.0)
    top1 = sampler.generate(model, PROMPTS, max_new_tokens=10, temperature=1.5, top_k=1,
                            rng=jax.random.key(0))
    assert top1.tokens == greedy.tokens


def test_same_key_same_samples_other_key_other_samples(llama):
    _, model = llama
    kw = dict(max_new_tokens=10, temperature=1.0, top_p=0.9, stop_token_ids=())
    a = sampler.generate(model, PROMPTS, rng=jax.random.key(1), **kw)
    b = sampler.generate(model, PROMPTS, rng=jax.random.key(1), **kw)
    c = sampler.generate(model, PROMPTS, rng=jax.random.key(2), **kw)
    assert a.tokens == b.tokens and a.tokens != c.tokens


def test_stop_token_ends_a_row_and_others_run_to_max_new_tokens(llama):
    _, model = llama
    free = sampler.generate(model, PROMPTS, max_new_tokens=10, temperature=0.0,
                            stop_token_ids=())
    stop = free.tokens[0][4]
    out = sampler.generate(model, PROMPTS, max_new_tokens=10, temperature=0.0,
                           stop_token_ids=[stop])
    end = free.tokens[0].index(stop) + 1
    assert out.tokens[0] == free.tokens[0][:end] and out.finished[0]
    assert out.lengths[0] == end == len(out.logprobs[0])
    for i in (1, 2):
        if stop not in free.tokens[i]:
            assert out.tokens[i] == free.tokens[i] and not out.finished[i]
            assert out.lengths[i] == 10


@pytest.fixture(scope="module")
def unstopped(llama):
    _, model = llama
    out = sampler.generate(model, PROMPTS[:1], max_new_tokens=32, temperature=0.0,
                           stop_token_ids=(), tokenizer=char_tokenizer())
    return out.tokens[0]


def first_completion(tokens, stop, tokenizer):
    return next(k for k in range(1, len(tokens) + 1)
                if stop in tokenizer.decode(tokens[:k], skip_special_tokens=True))


@pytest.mark.parametrize("written_as", ["its_own_encoding", "other_tokens"])
def test_stop_string_cuts_after_the_token_that_completes_it(llama, unstopped, written_as):
    """A stop string stops a row whether the model wrote its encoding or other tokens."""
    _, model = llama
    tokenizer = char_tokenizer()
    single = [2 <= t < 64 for t in unstopped]  # ids 2..63 are single characters
    pair = [t >= 64 for t in unstopped]  # ids 64.. are two-character tokens
    start = next(
        i for i in range(2, len(unstopped) - 2)
        if single[i + 1] and (single[i] if written_as == "its_own_encoding" else pair[i])
    )
    stop = tokenizer.decode(unstopped[start:start + 2])
    out = sampler.generate(model, PROMPTS[:1], max_new_tokens=32, temperature=0.0,
                           stop_token_ids=(), stop_strings=[stop], tokenizer=tokenizer)
    end = first_completion(unstopped, stop, tokenizer)
    assert out.tokens[0] == unstopped[:end]
    assert out.finished[0] and out.lengths[0] == end == len(out.logprobs[0])
    assert out.texts[0].endswith(stop) and out.texts[0].count(stop) == 1


def test_stop_sequence_match_is_on_the_last_tokens_only():
    seqs = sampler.stop_sequences([7], ["ab"], char_tokenizer())
    assert seqs.tolist() == [[-1, 7], [2, 3]]
    history = jnp.array([[5, 7], [2, 3], [3, 2], [7, 5]])
    assert sampler.ends_with_stop(history, jnp.asarray(seqs)).tolist() == [True, True, False, False]


def test_filter_logits_keeps_top_k_then_smallest_top_p_set():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    kept = lambda k, p: np.isfinite(sampler.filter_logits(logits, k, p)).tolist()[0]  # noqa: E731
    assert kept(2, 1.0) == [True, True, False, False]
    assert kept(0, 0.5) == [True, False, False, False]
    assert kept(0, 0.6) == [True, True, False, False]
    assert kept(0, 0.9) == [True, True, True, False]
    # top-p runs over the renormalised top-k: 0.5+0.3 = 0.8 < 0.83, but 0.8/0.95 > 0.83
    assert kept(0, 0.83) == [True, True, True, False]
    assert kept(3, 0.83) == [True, True, False, False]


def test_sample_tokens_take_the_first_largest_when_greedy_and_jax_categorical_draws_else():
    logits = jnp.array([[1.0, 3.0, 3.0, 0.0], [-jnp.inf, 2.0, 5.0, 5.0]])
    key = jax.random.key(3)
    args = (jnp.float32(1.0), jnp.int32(0))  # top_p, top_k
    greedy = sampler.sample_tokens(logits, key, jnp.float32(0.0), *args, filtered=False)
    assert greedy.tolist() == [1, 2]
    wide = jax.random.normal(jax.random.key(1), (64, 50))
    for t in (0.5, 1.3):
        drawn = sampler.sample_tokens(wide, key, jnp.float32(t), *args, filtered=False)
        np.testing.assert_array_equal(drawn, jax.random.categorical(key, wide / t, axis=-1))


def test_prompts_within_one_bucket_share_one_compilation(llama):
    _, model = llama
    sampler.generate(model, [[5, 6, 7]], max_new_tokens=5, temperature=0.0)
    before = sampler._prefill._cache_size(), sampler._decode._cache_size()
    sampler.generate(model, [[5] * 11], max_new_tokens=9, temperature=0.7, top_p=1.0,
                     rng=jax.random.key(0))
    assert (sampler._prefill._cache_size(), sampler._decode._cache_size()) == before


def test_bad_arguments_are_refused_before_any_compile(llama):
    _, model = llama
    with pytest.raises(UserError, match="stop_strings need the tokenizer"):
        sampler.generate(model, [[1]], max_new_tokens=4, temperature=0.0, stop_strings=["x"])
    with pytest.raises(UserError, match="needs rng"):
        sampler.generate(model, [[1]], max_new_tokens=4, temperature=1.0)
    with pytest.raises(UserError, match="prompt 1 has no tokens"):
        sampler.generate(model, [[1], []], max_new_tokens=4, temperature=0.0)
    with pytest.raises(UserError, match="outside"):
        sampler.generate(model, [[VOCAB]], max_new_tokens=4, temperature=0.0)


def test_model_on_an_8_device_mesh_generates_the_same_tokens_with_a_sharded_batch(
    llama, hf_checkpoint
):
    _, model = llama
    mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
    sharded, _ = hf.load(hf_checkpoint("llama")[1], mesh=mesh)
    prompts = PROMPTS + [PROMPTS[0][:2]]  # 4 rows: one per (data, fsdp) shard
    (placed,) = sampler._on_model_mesh(nnx.state(sharded), (np.zeros((4, 16), np.int32),))
    assert placed.sharding.spec == P(("data", "fsdp"), None)
    want = sampler.generate(model, prompts, max_new_tokens=8, temperature=0.0)
    got = sampler.generate(sharded, prompts, max_new_tokens=8, temperature=0.0)
    assert got.tokens == want.tokens
    np.testing.assert_allclose(np.concatenate(got.logprobs), np.concatenate(want.logprobs),
                               atol=1e-5)
