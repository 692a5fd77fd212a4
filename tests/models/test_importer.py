"""`exectune import` on tiny models: a GGUF file written here and an HF directory, no download."""

import json

import gguf
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import build_hf_model, char_tokenizer, torch_logits
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config
from transformers.convert_slow_tokenizer import bytes_to_unicode

from exectune_jax import cli
from exectune_jax.errors import UserError
from exectune_jax.models import hf, importer

# SmolLM2's specials; GPT2Tokenizer would add the first one beyond the vocabulary if it were absent
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ a", "a b"]
TOKENS = [*bytes_to_unicode().values(), *SPECIALS, "Ġa", "ab"]  # byte-level BPE, as SmolLM2's
BOS, EOS = TOKENS.index("<|im_start|>"), TOKENS.index("<|im_end|>")
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
                 "{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
IDS = np.random.RandomState(1).randint(0, len(TOKENS), (2, 12))


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order (rotary halves interleaved), which transformers' reader undoes."""
    halves = w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
    return halves.swapaxes(1, 2).reshape(w.shape)


def write_gguf(model, path) -> None:
    """`model` (a transformers Llama) as a float32 GGUF file with a byte-level tokenizer."""
    c = model.config
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("tiny")
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_rope_dimension_count(c.head_dim)
    writer.add_rope_freq_base(c.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(TOKENS)
    writer.add_token_types([gguf.TokenType.CONTROL if t in SPECIALS else gguf.TokenType.NORMAL
                            for t in TOKENS])
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(BOS)
    writer.add_eos_token_id(EOS)
    writer.add_chat_template(CHAT_TEMPLATE)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, c.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and c.tie_word_embeddings:
            continue
        w = tensor.numpy()
        if "q_proj" in name:
            w = llama_cpp_permute(w, c.num_attention_heads)
        elif "k_proj" in name:
            w = llama_cpp_permute(w, c.num_key_value_heads)
        writer.add_tensor(names.get_name(name, try_suffixes=(".weight",)), w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def our_logits(path, ids=IDS) -> np.ndarray:
    model, _ = hf.load(path)
    positions = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
    return np.asarray(model(jnp.asarray(ids), jnp.asarray(positions)))


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def gguf_model(request, tmp_path_factory):
    """(torch model, its .gguf file)."""
    model = build_hf_model("llama", tied=request.param, vocab_size=len(TOKENS),
                           pad_token_id=None, eos_token_id=EOS)
    path = tmp_path_factory.mktemp("gguf") / "tiny.F32.gguf"
    write_gguf(model, path)
    return model, path


def test_a_gguf_file_imports_as_a_directory_our_loader_reads_with_its_logits(gguf_model, tmp_path):
    torch_model, path = gguf_model
    out = importer.import_checkpoint(path, tmp_path / "guide")
    assert not [p for p in tmp_path.iterdir() if p.name != "guide"]  # no temp dir left beside
    # 1e-4: JAX's and torch's fp32 arithmetic differ that much on the same weights (as in test_hf)
    np.testing.assert_allclose(our_logits(out), torch_logits(torch_model, IDS), atol=1e-4)
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["eos_token_id"] == EOS
    with safe_open(out / "model.safetensors", "np") as f:
        stored = set(f.keys())
    # a tied head is stored once, as the embedding
    assert ("lm_head.weight" in stored) == (not torch_model.config.tie_word_embeddings)


def test_the_imported_tokenizer_keeps_vocabulary_specials_and_chat_template(gguf_model, tmp_path):
    out = importer.import_checkpoint(gguf_model[1], tmp_path / "guide")
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.eos_token == "<|im_end|>" and len(tok) == len(TOKENS)
    ids = tok.apply_chat_template([{"role": "user", "content": "ab a"}], add_generation_prompt=True,
                                  return_dict=False)
    assert ids[0] == BOS and ids.count(EOS) == 1
    assert tok.decode(ids) == "<|im_start|>user\nab a<|im_end|>\n<|im_start|>assistant\n"
    assert tok.convert_tokens_to_ids(["ab", "Ġa"]) == [TOKENS.index("ab"), TOKENS.index("Ġa")]


def test_an_hf_directory_imports_with_its_dtype_and_tokenizer(tmp_path):
    build_hf_model("qwen3").to(torch.bfloat16).save_pretrained(tmp_path / "src")
    char_tokenizer().save_pretrained(tmp_path / "src")
    out = importer.import_checkpoint(tmp_path / "src", tmp_path / "guide")
    with safe_open(out / "model.safetensors", "np") as f:
        assert f.get_slice("model.embed_tokens.weight").get_dtype() == "BF16"
    # the reference computes in fp32 from the bf16 weights, as our loader does
    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "src", dtype=torch.float32).eval()
    ids = IDS % reference.config.vocab_size
    np.testing.assert_allclose(our_logits(out, ids), torch_logits(reference, ids), atol=1e-4)
    assert AutoTokenizer.from_pretrained(out).get_vocab() == char_tokenizer().get_vocab()


def test_the_command_imports_and_then_refuses_the_now_full_directory(gguf_model, tmp_path, capsys):
    out = tmp_path / "guide"
    assert cli.main(["import", str(gguf_model[1]), str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"exectune import: wrote {out}"
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert cli.main(["import", str(gguf_model[1]), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not empty" in err and str(out) in err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_an_empty_out_dir_is_filled(gguf_model, tmp_path):
    (tmp_path / "guide").mkdir()
    importer.import_checkpoint(gguf_model[1], tmp_path / "guide")
    assert (tmp_path / "guide" / "model.safetensors").is_file()


@pytest.mark.parametrize("case,message", [
    ("missing", "not found"),
    ("not_gguf", "not a .gguf file or an HF model directory"),
    ("no_config", "no config.json"),
    ("architecture", "model_type 'gpt2' is not supported"),
    ("out_is_file", "exists and is not a directory"),
])
def test_refusals_are_one_line_and_write_nothing(tmp_path, case, message):
    source, out = tmp_path / "src", tmp_path / "guide"
    if case == "not_gguf":
        source.write_text("weights")
    if case == "no_config":
        source.mkdir()
    if case == "architecture":
        GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(source)
    if case == "out_is_file":
        source.mkdir()
        out.write_text("mine")
    with pytest.raises(UserError, match=message) as e:
        importer.import_checkpoint(source, out)
    assert "\n" not in str(e.value)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert out.read_text() == "mine" if case == "out_is_file" else not out.exists()


def test_a_missing_package_names_the_extra(monkeypatch, gguf_model, tmp_path):
    real = importer.importlib.util.find_spec
    monkeypatch.setattr(importer.importlib.util, "find_spec",
                        lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(UserError, match=r"needs gguf: pip install 'exectune-jax\[import\]'"):
        importer.import_checkpoint(gguf_model[1], tmp_path / "guide")
