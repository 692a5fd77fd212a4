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


def trained_adapters(path, targets=None, rank=4, alpha=8.0):
    """The HF model at `path` with adapters whose B is random, as if trained."""
    model, cfg = hf.load(path)
    spec = LoraConfig(rank=rank, alpha=alpha) if targets is None else LoraConfig(
        rank=rank, alpha=alpha, target_modules=targets)
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
    model, _ = trained_adapters(path, targets)
    lora.save_peft(model, tmp_path, str(path))
    config = json.loads((tmp_path / lora.PEFT_CONFIG_FILE).read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8.0
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
