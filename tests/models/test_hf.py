"""HF checkpoint directories: load, save, round trip, shards, meshes and one-line errors."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TOKENS_SHAPE, VOCAB, char_tokenizer, torch_logits
from flax import nnx
from jax.sharding import PartitionSpec as P
from safetensors.numpy import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from exectune_jax import parallel
from exectune_jax.models import hf

TOKENS = np.random.RandomState(1).randint(2, VOCAB, TOKENS_SHAPE)


def logits_of(model):
    positions = np.broadcast_to(np.arange(TOKENS.shape[1]), TOKENS.shape)
    return np.asarray(model(jnp.asarray(TOKENS), jnp.asarray(positions)))


@pytest.mark.parametrize("family,tied", [("llama", False), ("qwen2", True), ("qwen3", False)])
def test_saved_directory_loads_in_transformers_with_the_same_logits(
    hf_checkpoint, tmp_path, family, tied
):
    torch_model, path = hf_checkpoint(family, tied)
    model, cfg = hf.load(path)
    hf.save(model, cfg, tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.tie_word_embeddings == tied
    assert reloaded.config.rope_parameters["rope_theta"] == cfg.rope_theta
    np.testing.assert_allclose(
        torch_logits(reloaded, TOKENS), torch_logits(torch_model, TOKENS), atol=1e-6
    )
    assert json.loads((tmp_path / "generation_config.json").read_text())["eos_token_id"] == 1


def test_tied_checkpoint_stores_no_lm_head(hf_checkpoint, tmp_path):
    model, cfg = hf.load(hf_checkpoint("qwen2", True)[1])
    hf.save(model, cfg, tmp_path)
    assert "lm_head.weight" not in load_file(tmp_path / "model.safetensors")


def test_save_above_max_shard_bytes_writes_an_index_that_both_loaders_read(
    hf_checkpoint, tmp_path
):
    torch_model, path = hf_checkpoint("llama")
    model, cfg = hf.load(path)
    hf.save(model, cfg, tmp_path, max_shard_bytes=64 * 1024)
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 2 and not (tmp_path / "model.safetensors").exists()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    np.testing.assert_array_equal(logits_of(hf.load(tmp_path)[0]), logits_of(model))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    np.testing.assert_allclose(
        torch_logits(reloaded, TOKENS), torch_logits(torch_model, TOKENS), atol=1e-6
    )


def test_checkpoint_sharded_by_transformers_loads(hf_checkpoint, tmp_path):
    torch_model, _ = hf_checkpoint("qwen3")
    torch_model.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    model, _ = hf.load(tmp_path)
    assert np.abs(logits_of(model) - torch_logits(torch_model, TOKENS)).max() <= 1e-4


def test_resaving_a_smaller_checkpoint_removes_the_old_shards(hf_checkpoint, tmp_path):
    model, cfg = hf.load(hf_checkpoint("llama")[1])
    hf.save(model, cfg, tmp_path, max_shard_bytes=64 * 1024)
    hf.save(model, cfg, tmp_path)
    assert [p.name for p in tmp_path.glob("model*.safetensors*")] == ["model.safetensors"]


def test_tokenizer_is_saved_beside_the_weights(hf_checkpoint, tmp_path):
    model, cfg = hf.load(hf_checkpoint("llama")[1])
    tokenizer = char_tokenizer()
    hf.save(model, cfg, tmp_path, tokenizer=tokenizer)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.encode("ab</s", add_special_tokens=False) == tokenizer.encode(
        "ab</s", add_special_tokens=False
    )


def test_bfloat16_params_are_saved_as_bfloat16(hf_checkpoint, tmp_path):
    model, cfg = hf.load(hf_checkpoint("qwen3")[1], dtype=jnp.bfloat16)
    hf.save(model, cfg, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert str(reloaded.dtype) == "torch.bfloat16"


def test_load_onto_a_mesh_places_params_by_logical_rules_and_keeps_logits(hf_checkpoint):
    path = hf_checkpoint("qwen2")[1]
    mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
    sharded, _ = hf.load(path, mesh=mesh)
    q_kernel = sharded.layers.attn.q_proj.kernel.get_value()
    assert q_kernel.sharding.spec == P(None, "fsdp", "tensor")
    assert len(q_kernel.sharding.device_set) == 8
    np.testing.assert_allclose(logits_of(sharded), logits_of(hf.load(path)[0]), atol=1e-5)


# --- errors a user can cause: one line naming the file and the key ------------------------


def copy_checkpoint(hf_checkpoint, tmp_path, family="llama"):
    dst = tmp_path / "ckpt"
    shutil.copytree(hf_checkpoint(family)[1], dst)
    return dst


def assert_one_line(error, *fragments):
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_truncated_safetensors_names_the_file_and_the_cut_tensor(hf_checkpoint, tmp_path):
    path = copy_checkpoint(hf_checkpoint, tmp_path)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(hf.HFCheckpointError) as error:
        hf.load(path)
    assert_one_line(error, str(weights), "truncated", "tensor 'model.")


def test_garbage_weights_file_names_the_file(hf_checkpoint, tmp_path):
    path = copy_checkpoint(hf_checkpoint, tmp_path)
    (path / "model.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(hf.HFCheckpointError) as error:
        hf.load(path)
    assert_one_line(error, str(path / "model.safetensors"), "not a valid safetensors file")


def test_unsupported_model_type_lists_the_supported_ones(hf_checkpoint, tmp_path):
    path = copy_checkpoint(hf_checkpoint, tmp_path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "model_type": "mistral"}))
    with pytest.raises(hf.HFCheckpointError) as error:
        hf.load(path)
    assert_one_line(
        error, str(path / "config.json"), "'mistral' is not supported", "llama, qwen2, qwen3"
    )


def test_missing_tensor_names_the_file_and_the_key(hf_checkpoint, tmp_path):
    path = copy_checkpoint(hf_checkpoint, tmp_path)
    weights = path / "model.safetensors"
    tensors = load_file(weights)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(hf.HFCheckpointError) as error:
        hf.load(path)
    assert_one_line(error, str(weights), "'model.layers.1.mlp.up_proj.weight' is missing")


def test_shape_mismatch_names_the_key_and_both_shapes(hf_checkpoint, tmp_path):
    path = copy_checkpoint(hf_checkpoint, tmp_path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "intermediate_size": 96}))
    with pytest.raises(hf.HFCheckpointError) as error:
        hf.load(path)
    assert_one_line(error, "'model.layers.0.mlp.gate_proj.weight'", "(128, 64)", "(96, 64)")


def test_directory_without_weights_says_what_is_needed(hf_checkpoint, tmp_path):
    path = copy_checkpoint(hf_checkpoint, tmp_path)
    (path / "model.safetensors").unlink()
    with pytest.raises(hf.HFCheckpointError) as error:
        hf.load(path)
    assert_one_line(error, "no model.safetensors or model.safetensors.index.json")


def test_loaded_params_are_plain_arrays_without_a_mesh(hf_checkpoint):
    model, _ = hf.load(hf_checkpoint("llama")[1])
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert all(len(x.sharding.device_set) == 1 for x in leaves)
