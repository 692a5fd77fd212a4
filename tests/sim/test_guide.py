"""The embedded demo guide: tokenizer properties, advice without the format, deterministic build."""

import json

import pytest
from transformers import AutoTokenizer

from exectune_jax.cli import main
from exectune_jax.config import ConfigError, load_config
from exectune_jax.data import tasks
from exectune_jax.errors import UserError
from exectune_jax.gcop import prompts, strategy
from exectune_jax.models import hf
from exectune_jax.sim import guide
from exectune_jax.train import sft

TASK = "task.options={n_train: 60, n_validation: 4, n_test: 4}"
TINY = ("sft.base_guide={vocab_size: 400, hidden_size: 32, intermediate_size: 64, num_layers: 1, "
        "num_heads: 2, num_kv_heads: 1, warmup_steps: 2, warmup_batch_size: 2}")


@pytest.fixture(scope="module")
def problems():
    return tasks.get("arith", n_train=60, n_validation=0, n_test=0).problems("train")


@pytest.fixture(scope="module")
def tokenizer(problems, tmp_path_factory):
    """Trained, saved and read back the way every stage reads it."""
    path = tmp_path_factory.mktemp("tok")
    guide.train_tokenizer(guide.tokenizer_corpus(problems), vocab_size=400).save_pretrained(path)
    return AutoTokenizer.from_pretrained(str(path))


def test_numbers_are_one_token_per_digit(tokenizer):
    ids = tokenizer("Multiply 4096 by 17.", add_special_tokens=False)["input_ids"]
    pieces = [tokenizer.decode([i]) for i in ids]
    digits = [p for p in pieces if any(c.isdigit() for c in p)]
    assert digits == list("409617")


def test_strategy_text_round_trips_exactly(problems, tokenizer):
    text = guide.gold_strategy(problems[0]) + "\nA line with spaces  and\ttabs."
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text


def test_chat_template_marks_roles_with_single_special_tokens(problems, tokenizer):
    msgs = prompts.guide_messages(problems[0], "math")
    text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert ids[-2:] == tokenizer.convert_tokens_to_ids(["<|assistant|>", "Ċ"])
    assert tokenizer.eos_token_id in ids and tokenizer.pad_token_id == 0
    assert text.endswith(f"{msgs[0]['content']}{tokenizer.eos_token}\n<|assistant|>\n")


def test_advice_has_no_strategy_format_and_no_answer(problems):
    for p in problems[:30]:
        text = guide.advice(p)
        assert strategy.parse(text).error.kind == "missing_tag"
        assert strategy.leaks(text, p, "math") is None, (text, p.answer)


def test_gold_strategies_parse_as_well_formed(problems):
    for p in problems:
        parsed = strategy.parse(guide.gold_strategy(p))
        assert parsed.ok and len(parsed.steps) == p.meta["steps"]


def test_base_guide_is_deterministic_from_the_seed_and_reused(tmp_path):
    built = []
    for name in ("a", "b"):
        cfg = load_config(None, [f"run_dir={tmp_path / name}", TASK, TINY])
        built.append(guide.ensure_base_guide(cfg))
    a, b = built
    for f in ("model.safetensors", "tokenizer.json", "config.json", "chat_template.jinja"):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    _, mcfg = hf.load(a)
    tokenizer = AutoTokenizer.from_pretrained(str(a))
    assert mcfg.vocab_size == len(tokenizer)
    assert mcfg.tie_word_embeddings and mcfg.eos_token_id == tokenizer.eos_token_id
    stamp = (a / "model.safetensors").stat().st_mtime_ns
    same_corpus = "task.options={n_train: 60, n_validation: 4, n_test: 4, min_steps: 2}"
    again = load_config(None, [f"run_dir={tmp_path / 'a'}", same_corpus, TINY])
    assert guide.ensure_base_guide(again) == a
    assert (a / "model.safetensors").stat().st_mtime_ns == stamp
    other_seed = load_config(None, [f"run_dir={tmp_path / 'a'}", TASK, TINY, "seed=1"])
    with pytest.raises(UserError, match="built with other settings"):
        guide.ensure_base_guide(other_seed)
    assert json.loads((a / guide.MARKER).read_text())["seed"] == 0


def test_a_pretrained_model_path_is_the_base_guide_and_nothing_is_built(tmp_path):
    pretrained = tmp_path / "smollm2"
    pretrained.mkdir()
    (pretrained / hf.CONFIG_FILE).write_text("{}")
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", TASK, TINY, f"model.path={pretrained}"])
    assert guide.ensure_base_guide(cfg) == pretrained
    assert not (tmp_path / "run").exists()  # no demo guide built beside it
    missing = load_config(None, [f"run_dir={tmp_path / 'run'}", f"model.path={tmp_path / 'none'}"])
    with pytest.raises(UserError, match="exectune import FILE.gguf"):
        guide.ensure_base_guide(missing)


def test_unknown_base_guide_key_names_the_key(tmp_path):
    cfg = load_config(None, [f"run_dir={tmp_path}", "sft.base_guide={hidden: 64}"])
    with pytest.raises(ConfigError, match="sft.base_guide.hidden"):
        guide.ensure_base_guide(cfg)


def test_sft_command_builds_the_base_guide_the_stage_itself_refuses_to_build_and_reads_no_test(tmp_path):
    problems = tasks.get("arith", n_train=60, n_validation=4, n_test=4).problems("train")
    data = tmp_path / "accepted.jsonl"
    data.write_text("".join(json.dumps({"id": p.id, "messages": prompts.guide_messages(p, "math"),
                                        "completion": guide.gold_strategy(p)}) + "\n"
                            for p in problems[:8]))
    args = [f"run_dir={tmp_path / 'run'}", TASK, TINY, f"sft.data={data}", "sft.steps=1",
            "sft.batch_size=2", "sft.seq_len=512", "sft.held_out=0.0", "sft.eval_every=0",
            "sft.checkpoint_every=0", "mesh.fsdp=1", "metrics.progress=false"]
    with pytest.raises(UserError, match="exectune sft"):
        sft.run(load_config(None, args))
    assert not (tmp_path / "run" / "base_guide").exists()
    before = len(tasks.reads())
    assert main(["sft", *args]) == 0
    assert set(tasks.reads()[before:]) == {("sft", "arith", "train"), ("sft", "arith", "validation")}
    assert (tmp_path / "run" / "base_guide" / guide.MARKER).exists()
    assert (tmp_path / "run" / "sft" / "guide" / "config.json").exists()
