"""Tiny random HF models (PyTorch, fp32) and a character tokenizer, shared by the model tests."""

import string

import numpy as np
import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

VOCAB = 128
PAD, EOS = 0, 1
TOKENS_SHAPE = (2, 12)
_CONFIGS = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}


def build_hf_model(family: str, *, tied: bool = False, seed: int = 0, **overrides):
    """d=64, 2 layers, 4 query heads over 2 KV heads; weights scaled so logits are not flat."""
    torch.manual_seed(seed)
    kwargs = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        tie_word_embeddings=tied,
        pad_token_id=PAD,
        bos_token_id=None,
        eos_token_id=EOS,
    )
    kwargs.update(overrides)
    model = AutoModelForCausalLM.from_config(_CONFIGS[family](**kwargs)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
    """(family, tied) -> (torch model, directory written by save_pretrained); built once each."""
    built = {}

    def get(family: str, tied: bool = False):
        if (family, tied) not in built:
            model = build_hf_model(family, tied=tied)
            path = tmp_path_factory.mktemp(f"{family}_{'tied' if tied else 'untied'}")
            model.save_pretrained(path)
            built[family, tied] = (model, path)
        return built[family, tied]

    return get


def torch_logits(model, tokens) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(tokens), dtype=torch.long)).logits.numpy()


def char_tokenizer() -> PreTrainedTokenizerFast:
    """128 ids: pad, eos, 62 single characters, 64 two-character tokens.

    Encoding splits text into single characters, so a two-character token can be generated
    but never appears in an encoding: the case where a stop string is written with other
    tokens than its own encoding.
    """
    chars = string.ascii_letters + "<>/" + string.digits[:7]
    pairs = [a + b for a in "<>/xyzab" for b in "stragey<"][:64]
    vocab = {"<pad>": PAD, "<eos>": EOS}
    for token in list(chars) + pairs:
        vocab.setdefault(token, len(vocab))
    assert len(vocab) == VOCAB
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<pad>"
    )
