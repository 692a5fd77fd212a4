"""LoRA adapters: identity at init, merged export and PEFT adapter parity with the adapted model."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TOKENS_SHAPE, VOCAB, torch_logits
from flax import nnx
from jax.sharding import PartitionSpec as P
from peft import PeftModel
from transformers import AutoModelForCausalLM

from exectune_jax import parallel
from exectune_jax.config import LoraConfig
from exectune_jax.models import hf, lora

TOKENS = np.random.RandomState(2).randint(2, VOCAB, TOKENS_SHAPE)


def logits_of(model):
    positions = np.broadcast_to(np.arange(TOKENS.shape[1]), TOKENS.shape)
    return np.asarray(model(jnp.asarray(TOKENS), jnp.asarray(positions)))


def trained_adapters(path, targets=None, rank=4, alpha=8.0, dropout=0.0):
    """The HF model at `path` with adapters whose B is random, as if trained."""
    model, cfg = hf.load(path)
    chosen = {} if targets is None else {"target_modules": targets}
    spec = LoraConfig(rank=rank, alpha=alpha, dropout=dropout, **chosen)
    lora.apply(model, spec, seed=1)
    for i, (_, _, module) in enumerate(lora.adapted(model)):
        b = module.lora_b
        b.set_value(0.3 * jax.random.normal(jax.random.key(10 + i), b.get_value().shape))
    return model, cfg


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_fresh_adapters_leave_the_base_function_unchanged(hf_checkpoint, family):
    _, path = hf_checkpoint(family)
    base, _ = hf.load(path)
    adapted, _ = hf.load(path)
    lora.apply(adapted, LoraConfig(rank=4), seed=0)
    assert len(list(lora.adapted(adapted))) == 7
    np.testing.assert_array_equal(logits_of(adapted), logits_of(base))


def test_adapter_dropout_drops_whole_input_entries_at_its_rate_and_spares_the_base(hf_checkpoint):
    _, path = hf_checkpoint("llama")
    model, _ = trained_adapters(path, dropout=0.25)
    graphdef, state = nnx.split(model.layers.mlp.down_proj)
    layer = nnx.merge(graphdef, jax.tree.map(lambda a: a[0], state))  # layer 0's projection
    x = jnp.zeros((4000, layer.lora_a.shape[0])).at[:, 3].set(1.0)  # one input entry per row
    base = x @ layer.kernel[...]
    adapter = np.asarray(layer(x) - base)  # no key: no dropout
    dropped = np.asarray(layer(x, jax.random.key(0)) - base)
    zeroed = np.all(dropped == 0, axis=1)
    assert 0.22 < zeroed.mean() < 0.28  # the rate, row by row
    # a kept entry is scaled by 1 / (1 - p), so the adapter's expected output is unchanged
    np.testing.assert_allclose(dropped[~zeroed], adapter[~zeroed] / 0.75, rtol=1e-5)


def test_a_dropout_key_changes_only_what_the_adapters_add(hf_checkpoint):
    _, path = hf_checkpoint("qwen3")
    positions = np.broadcast_to(np.arange(TOKENS.shape[1]), TOKENS.shape)
    fresh, _ = hf.load(path)
    lora.apply(fresh, LoraConfig(rank=4, dropout=0.5), seed=0)
    trained, _ = trained_adapters(path, dropout=0.5)
    key = jax.random.key(7)
    for model, changes in ((fresh, False), (trained, True)):
        plain, _ = model.hidden(TOKENS, positions)
        dropped, _ = model.hidden(TOKENS, positions, dropout_key=key)
        assert bool(np.any(np.asarray(plain) != np.asarray(dropped))) == changes
    again, _ = trained.hidden(TOKENS, positions, dropout_key=key)
    other, _ = trained.hidden(TOKENS, positions, dropout_key=jax.random.key(8))
    np.testing.assert_array_equal(np.asarray(again), np.asarray(dropped))
    assert np.abs(np.asarray(other) - np.asarray(dropped)).max() > 1e-3


@pytest.mark.parametrize("family,tied", [("llama", False), ("qwen2", True), ("qwen3", False)])
def test_merged_export_loads_in_transformers_with_the_adapted_logits(
        hf_checkpoint, tmp_path, family, tied):
    _, path = hf_checkpoint(family, tied)
    model, cfg = trained_adapters(path)
    ours = logits_of(model)
    base, _ = hf.load(path)
    assert np.abs(ours - logits_of(base)).max() > 1e-2  # the adapters do change the function
    hf.save(lora.merged(model), cfg, tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    np.testing.assert_allclose(torch_logits(reloaded, TOKENS), ours, atol=1e-4)


@pytest.mark.parametrize("family,targets", [("qwen3", None), ("llama", ["q_proj", "v_proj"])])
def test_peft_adapter_on_the_hf_base_gives_the_adapted_logits(
        hf_checkpoint, tmp_path, family, targets):
    _, path = hf_checkpoint(family)
    model, _ = trained_adapters(path, targets, dropout=0.1)
    lora.save_peft(model, tmp_path, str(path))
    config = json.loads((tmp_path / lora.PEFT_CONFIG_FILE).read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8.0 and config["lora_dropout"] == 0.1
    base = AutoModelForCausalLM.from_pretrained(path).eval()
    peft_model = PeftModel.from_pretrained(base, tmp_path).eval()
    np.testing.assert_allclose(torch_logits(peft_model, TOKENS), logits_of(model), atol=1e-4)


def test_saving_an_unmerged_adapted_model_is_refused(hf_checkpoint, tmp_path):
    _, path = hf_checkpoint("llama")
    model, cfg = trained_adapters(path)
    with pytest.raises(ValueError, match="merged"):
        hf.save(model, cfg, tmp_path)


def test_without_adapters_is_the_base_model(hf_checkpoint):
    _, path = hf_checkpoint("qwen3")
    model, _ = trained_adapters(path)
    base, _ = hf.load(path)
    graphdef, params = nnx.split(model)
    np.testing.assert_array_equal(logits_of(nnx.merge(graphdef, lora.without_adapters(params))),
                                  logits_of(base))


def test_adapters_follow_the_base_sharding_on_a_mesh(hf_checkpoint):
    _, path = hf_checkpoint("llama")
    mesh = parallel.make_mesh(1, 2, 2)
    with parallel.use_mesh(mesh):
        model, _ = hf.load(path, mesh=mesh)
        lora.apply(model, LoraConfig(rank=4), mesh=mesh)
        q = model.layers.attn.q_proj
        assert q.lora_a.get_value().sharding.spec == P(None, "fsdp", None)
        assert q.lora_b.get_value().sharding.spec == P(None, None, "tensor")
        base, _ = hf.load(path, mesh=mesh)
        np.testing.assert_allclose(logits_of(model), logits_of(base), atol=1e-6)
