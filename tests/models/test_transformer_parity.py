"""The nnx decoder computes what the HF PyTorch models compute, for every supported family."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import VOCAB, build_hf_model, torch_logits
from flax import nnx
from jax.sharding import PartitionSpec as P

from exectune_jax.models import hf
from exectune_jax.models.architecture import ModelConfig, ModelConfigError
from exectune_jax.models.transformer import Transformer

TOKENS = np.random.RandomState(0).randint(2, VOCAB, (2, 12))
POSITIONS = np.broadcast_to(np.arange(12), (2, 12))


@nnx.jit
def forward(model, tokens, positions, segment_ids):
    return model(tokens, positions, segment_ids=segment_ids)


def ours(model, tokens, positions=None, segment_ids=None):
    tokens = np.asarray(tokens)
    if positions is None:
        positions = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
    return np.asarray(forward(model, tokens, np.asarray(positions), segment_ids))


@pytest.mark.parametrize(
    "family,tied",
    [("llama", False), ("llama", True), ("qwen2", False), ("qwen2", True), ("qwen3", False)],
)
def test_logits_match_hf_within_1e4_with_same_argmax(hf_checkpoint, family, tied):
    torch_model, path = hf_checkpoint(family, tied)
    model, cfg = hf.load(path)
    assert (cfg.model_type, cfg.tie_word_embeddings) == (family, tied)
    got, want = ours(model, TOKENS), torch_logits(torch_model, TOKENS)
    assert np.abs(got - want).max() <= 1e-4
    np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "linear", "factor": 4.0},
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
    ],
    ids=["linear", "llama3"],
)
def test_scaled_rope_matches_hf(tmp_path, rope):
    torch_model = build_hf_model("llama", rope_parameters={"rope_theta": 500.0, **rope})
    torch_model.save_pretrained(tmp_path)
    model, cfg = hf.load(tmp_path)
    assert cfg.rope_scaling["rope_type"] == rope["rope_type"] and cfg.rope_theta == 500.0
    positions = POSITIONS * 9  # long distances, where the scaled frequencies differ
    got = ours(model, TOKENS, positions)
    want = torch_logits_at(torch_model, TOKENS, positions)
    assert np.abs(got - want).max() <= 1e-4


def torch_logits_at(torch_model, tokens, positions):
    import torch

    with torch.no_grad():
        return torch_model(
            torch.as_tensor(tokens), position_ids=torch.as_tensor(np.ascontiguousarray(positions))
        ).logits.numpy()


def test_legacy_rope_fields_read_like_v5_rope_parameters():
    base = dict(
        model_type="llama", vocab_size=8, hidden_size=8, intermediate_size=8,
        num_hidden_layers=1, num_attention_heads=2,
    )
    legacy = ModelConfig.from_hf(
        {**base, "rope_theta": 500.0, "rope_scaling": {"type": "linear", "factor": 2.0}}
    )
    v5 = ModelConfig.from_hf(
        {**base, "rope_parameters": {"rope_type": "linear", "rope_theta": 500.0, "factor": 2.0}}
    )
    assert legacy == v5
    assert ModelConfig.from_hf(v5.to_hf()) == v5


def test_unsupported_rope_type_is_refused_by_name():
    with pytest.raises(ModelConfigError, match="rope_type 'yarn' is not supported"):
        ModelConfig.from_hf(
            dict(
                model_type="qwen3", vocab_size=8, hidden_size=8, intermediate_size=8,
                num_hidden_layers=1, num_attention_heads=2,
                rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0},
            )
        )


@pytest.fixture(scope="module")
def qwen3(hf_checkpoint):
    return hf.load(hf_checkpoint("qwen3")[1])[0]


def test_packed_sequences_equal_separate_forwards(qwen3):
    a, b = TOKENS[0, :5], TOKENS[1, :7]
    packed = np.concatenate([a, b])[None]
    positions = np.concatenate([np.arange(5), np.arange(7)])[None]
    segments = np.array([[1] * 5 + [2] * 7])
    got = ours(qwen3, packed, positions, segment_ids=segments)[0]
    np.testing.assert_allclose(got[:5], ours(qwen3, a[None])[0], atol=1e-5)
    np.testing.assert_allclose(got[5:], ours(qwen3, b[None])[0], atol=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_with_positions_leaves_real_token_logits_unchanged(qwen3, side):
    real = TOKENS[0, :7]
    pad = np.zeros(5, np.int64)
    tokens = np.concatenate([pad, real] if side == "left" else [real, pad])[None]
    segments = np.concatenate([pad, np.ones(7)] if side == "left" else [np.ones(7), pad])[None]
    positions = np.concatenate(
        [pad, np.arange(7)] if side == "left" else [np.arange(7), pad]
    )[None]
    got = ours(qwen3, tokens, positions, segment_ids=segments)[0]
    got = got[5:] if side == "left" else got[:7]
    np.testing.assert_allclose(got, ours(qwen3, real[None])[0], atol=1e-5)


def test_params_carry_logical_partition_specs_without_a_mesh():
    cfg = ModelConfig("qwen2", vocab_size=32, hidden_size=16, intermediate_size=32,
                      num_layers=1, num_heads=2, num_kv_heads=1)
    specs = nnx.get_partition_spec(nnx.state(Transformer(cfg, rngs=nnx.Rngs(0))))
    flat = {path: v.get_value() for path, v in nnx.to_flat_state(specs)}
    layer = ("layers",)  # every block's parameters stacked along a leading `layers` axis
    assert flat[("embed",)] == P("vocab", "embed")
    assert flat[("lm_head",)] == P("embed", "vocab")
    assert flat[(*layer, "attn", "q_proj", "kernel")] == P("layers", "embed", "heads")
    assert flat[(*layer, "attn", "k_proj", "kernel")] == P("layers", "embed", "kv_heads")
    assert flat[(*layer, "attn", "k_proj", "bias")] == P("layers", "kv_heads")
    assert flat[(*layer, "attn", "o_proj", "kernel")] == P("layers", "heads", "embed")
    assert flat[(*layer, "mlp", "gate_proj", "kernel")] == P("layers", "embed", "mlp")
    assert flat[(*layer, "mlp", "down_proj", "kernel")] == P("layers", "mlp", "embed")
    assert flat[(*layer, "attn_norm", "scale")] == P("layers", "norm")


def test_bfloat16_compute_keeps_float32_params_and_stays_close(hf_checkpoint):
    torch_model, path = hf_checkpoint("llama")
    model, _ = hf.load(path, compute_dtype=jnp.bfloat16)
    assert {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))} == {np.dtype("float32")}
    got = ours(model, TOKENS)
    assert got.dtype == np.float32
    want = torch_logits(torch_model, TOKENS)
    assert np.abs(got - want).max() < 0.1 * np.abs(want).max()


def test_family_switches_cannot_contradict_the_family():
    with pytest.raises(ModelConfigError, match="qk_norm=True does not match model_type 'llama'"):
        ModelConfig("llama", 8, 8, 8, 1, 2, 2, qk_norm=True)
