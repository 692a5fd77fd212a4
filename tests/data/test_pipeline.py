"""The SFT and RL grain pipelines: row errors, loss masks, packing, resume, per-process rows."""

import json
import logging

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from exectune_jax.data import pipeline, tasks
from exectune_jax.gcop import prompts
from exectune_jax.models.architecture import ModelConfig
from exectune_jax.models.transformer import Transformer
from exectune_jax.sim import guide

N_PROBLEMS = 40
SEQ = 512  # several examples per packed row


@pytest.fixture(scope="module")
def problems():
    return tasks.get("arith", n_train=N_PROBLEMS, n_validation=0, n_test=0).problems("train")


@pytest.fixture(scope="module")
def tokenizer(problems):
    return guide.train_tokenizer(guide.tokenizer_corpus(problems), vocab_size=400)


def _row(p, completion=None):
    return {"id": p.id, "messages": prompts.guide_messages(p, "math"),
            "completion": completion or guide.gold_strategy(p), "style": "atomic",
            "attempt": 0, "revision": 0}


@pytest.fixture(scope="module")
def accepted(tmp_path_factory, problems):
    path = tmp_path_factory.mktemp("sample") / "accepted.jsonl"
    path.write_text("".join(json.dumps(_row(p)) + "\n" for p in problems))
    return path


@pytest.fixture(scope="module")
def examples(accepted, tokenizer):
    return pipeline.load_sft_examples(accepted, tokenizer, seq_len=SEQ).train


def test_broken_json_line_is_named_with_file_and_line(tmp_path, problems):
    path = tmp_path / "accepted.jsonl"
    path.write_text(json.dumps(_row(problems[0])) + "\n" + '{"id": "x", "messages": [\n')
    with pytest.raises(pipeline.SftDataError, match=rf"{path}:2: not valid JSON"):
        pipeline.read_rows(path)


def test_row_with_a_missing_field_names_the_field_and_line(tmp_path, problems):
    row = _row(problems[0])
    del row["completion"]
    path = tmp_path / "accepted.jsonl"
    path.write_text(json.dumps(_row(problems[1])) + "\n\n" + json.dumps(row) + "\n")
    with pytest.raises(pipeline.SftDataError, match=rf"{path}:3: field `completion`"):
        pipeline.read_rows(path)


def test_overlong_row_is_dropped_and_counted(tmp_path, problems, tokenizer, caplog):
    rows = [_row(p) for p in problems[:5]]
    rows[2]["completion"] = guide.gold_strategy(problems[2]) + " padding" * 300
    path = tmp_path / "accepted.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level(logging.WARNING):
        data = pipeline.load_sft_examples(path, tokenizer, seq_len=SEQ)
    assert data.dropped == 1
    assert [e.id for e in data.train] == [r["id"] for i, r in enumerate(rows) if i != 2]
    assert "dropped 1 of 5 rows" in caplog.text and str(path) in caplog.text


def test_loss_mask_covers_exactly_the_strategy_and_eos(problems, tokenizer):
    p = problems[3]
    completion = guide.gold_strategy(p)
    ex = pipeline.encode_example(tokenizer, prompts.guide_messages(p, "math"), completion)
    masked = ex.targets[ex.loss_mask == 1]
    assert masked[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(masked[:-1]) == completion
    prompt = pipeline.encode_prompt(tokenizer, prompts.guide_messages(p, "math"))
    assert ex.loss_mask.sum() == len(ex.targets) - len(prompt) + 1
    assert not ex.loss_mask[: len(prompt) - 1].any()
    assert np.array_equal(ex.inputs[1:], ex.targets[:-1])


def test_held_out_split_keeps_whole_problems_out_of_training(tmp_path, problems, tokenizer):
    rows = [_row(p) for p in problems[:10]] * 2  # two strategies per problem
    path = tmp_path / "accepted.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = pipeline.load_sft_examples(path, tokenizer, seq_len=SEQ, held_out=0.2, seed=1)
    held = {e.id for e in data.held_out}
    assert len(held) == 2 and len(data.held_out) == 4
    assert not held & {e.id for e in data.train}


def test_packed_rows_restart_positions_per_segment_and_mask_padding(examples):
    it = pipeline.sft_iterator(examples, seq_len=SEQ, batch_size=4, seed=0,
                               process_index=0, process_count=1)
    batch = next(it)
    assert set(batch) == set(pipeline.BATCH_KEYS)
    assert all(v.shape == (4, SEQ) and v.dtype == np.int32 for v in batch.values())
    seg, pos = batch["segment_ids"], batch["positions"]
    assert (seg.max(axis=1) >= 2).all(), "packed rows should hold several examples"
    starts = np.diff(seg, axis=1, prepend=0) != 0
    assert (pos[starts & (seg > 0)] == 0).all()
    inner = ~starts & (seg > 0)
    assert (pos[:, 1:][inner[:, 1:]] == pos[:, :-1][inner[:, 1:]] + 1).all()
    assert not batch["loss_mask"][seg == 0].any()


def test_packed_segments_do_not_attend_to_each_other(examples):
    it = pipeline.sft_iterator(examples, seq_len=SEQ, batch_size=2, seed=0,
                               process_index=0, process_count=1)
    batch = {k: jnp.asarray(v) for k, v in next(it).items()}
    cfg = ModelConfig(model_type="llama", vocab_size=512, hidden_size=32, intermediate_size=64,
                      num_layers=2, num_heads=2, num_kv_heads=1)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    logits = model(batch["tokens"], batch["positions"], segment_ids=batch["segment_ids"])
    second = batch["segment_ids"][0] == 2
    changed = batch["tokens"].at[0].set(jnp.where(second, 7, batch["tokens"][0]))
    logits2 = model(changed, batch["positions"], segment_ids=batch["segment_ids"])
    others = ~second
    np.testing.assert_array_equal(np.asarray(logits[0][others]), np.asarray(logits2[0][others]))
    np.testing.assert_array_equal(np.asarray(logits[1]), np.asarray(logits2[1]))
    assert not np.allclose(logits[0][second], logits2[0][second])


def test_restored_iterator_continues_where_it_stopped(examples):
    kw = dict(seq_len=SEQ, batch_size=4, seed=3, process_index=0, process_count=1)
    it = pipeline.sft_iterator(examples, **kw)
    first = next(it)
    for _ in range(5):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(3)]
    resumed = pipeline.sft_iterator(examples, **kw)
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        assert all(np.array_equal(got[k], want[k]) for k in want)
    assert not np.array_equal(expected[0]["tokens"], first["tokens"])


def test_each_process_gets_its_rows_of_the_same_global_batch(examples):
    kw = dict(seq_len=SEQ, batch_size=4, seed=0)
    whole = next(pipeline.sft_iterator(examples, process_index=0, process_count=1, **kw))
    parts = [next(pipeline.sft_iterator(examples, process_index=i, process_count=2, **kw))
             for i in range(2)]
    for k in whole:
        np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), whole[k])


def test_eval_batches_hold_every_example_once_padded_to_full_batches(examples):
    batches = pipeline.eval_batches(examples[:7], seq_len=SEQ, batch_size=4)
    assert all(b["tokens"].shape == (4, SEQ) for b in batches)
    segments = sum(int(len(np.unique(row[row > 0]))) for b in batches for row in b["segment_ids"])
    assert segments == 7
    masked = sum(int(b["loss_mask"].sum()) for b in batches)
    assert masked == sum(int(e.loss_mask.sum()) for e in examples[:7])


def test_rl_prompt_batches_cover_each_problem_once_per_epoch_and_resume(problems):
    it = pipeline.rl_prompt_iterator(problems[:12], batch_size=4, seed=0)
    epoch1 = [p.id for _ in range(3) for p in next(it)]
    assert sorted(epoch1) == sorted(p.id for p in problems[:12])
    state = it.get_state()
    epoch2 = [p.id for _ in range(3) for p in next(it)]
    assert sorted(epoch2) == sorted(epoch1) and epoch2 != epoch1
    again = pipeline.rl_prompt_iterator(problems[:12], batch_size=4, seed=0)
    again.set_state(state)
    assert [p.id for p in next(again)] == epoch2[:4]


def test_rl_prompt_batches_of_one_problem_cover_each_problem_once_per_epoch(problems):
    it = pipeline.rl_prompt_iterator(problems[:3], batch_size=1, seed=0)
    batches = [next(it) for _ in range(6)]
    assert all(len(b) == 1 for b in batches)
    ids = [b[0].id for b in batches]
    assert sorted(ids[:3]) == sorted(ids[3:]) == sorted(p.id for p in problems[:3])


def test_empty_problem_list_is_a_user_error():
    with pytest.raises(pipeline.UserError, match="no problems"):
        pipeline.rl_prompt_iterator([], batch_size=2, seed=0)


# The generation-prompt logic of Qwen3's chat template (reasoning mode on unless switched off).
QWEN3_LIKE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n"
              "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
              "{% endif %}{% endif %}")


def test_guide_prompts_switch_off_a_templates_reasoning_mode(problems, tokenizer):
    messages = prompts.guide_messages(problems[0], "math")
    plain = pipeline.encode_prompt(tokenizer, messages)
    original = tokenizer.chat_template
    try:
        tokenizer.chat_template = QWEN3_LIKE
        text = tokenizer.decode(pipeline.encode_prompt(tokenizer, messages))
    finally:
        tokenizer.chat_template = original
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert pipeline.encode_prompt(tokenizer, messages) == plain  # templates without the switch
