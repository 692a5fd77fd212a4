"""grain input pipelines: packed SFT batches from accepted.jsonl, and RL prompt batches.

SFT:  accepted.jsonl rows -> tokenized once (chat template; loss on the strategy + EOS only;
      rows longer than the context dropped and counted) -> grain.MapDataset -> seeded shuffle,
      reshuffled every epoch -> repeat -> first-fit packing to `seq_len` with per-segment
      positions and segment ids -> batch -> this process's rows -> numpy
      {tokens, positions, segment_ids, targets, loss_mask}.

Tokenizing up front (not lazily inside grain) is deliberate: the accepted sets this project
trains on are thousands of rows, a fast tokenizer does them in a second, and only then can an
over-long row be reported with its line before training starts rather than mid-run.

Every process builds the same global batch stream and keeps its own rows. That makes a multi-host
run see exactly the batches a single-host run sees, and makes the iterator state one small dict
(grain `get_state`/`set_state`) that a checkpoint restores to the exact position — no replay.

Prompts are encoded by `encode_prompt` here and everywhere else (sampling, RL, evaluation), so
the guide is trained on exactly the token sequence it is later asked to continue.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grain
import grain.experimental as grain_x
import numpy as np

from exectune_jax.errors import UserError
from exectune_jax.io import read_jsonl

log = logging.getLogger(__name__)

BATCH_KEYS = ("tokens", "positions", "segment_ids", "targets", "loss_mask")
_PACKED = ("inputs", "targets", "loss_mask")


class SftDataError(UserError):
    """A row of an SFT data file is not usable; the message names the file and line."""


@dataclass(frozen=True)
class Example:
    """One tokenized (prompt, strategy) pair, already shifted for next-token prediction."""

    id: str
    inputs: np.ndarray  # int32 [n]: prompt + completion tokens, minus the last
    targets: np.ndarray  # int32 [n]: the same sequence shifted left by one
    loss_mask: np.ndarray  # int32 [n]: 1 where the target is a completion (strategy or EOS) token

    def as_dict(self) -> dict[str, np.ndarray]:
        return {"inputs": self.inputs, "targets": self.targets, "loss_mask": self.loss_mask}


@dataclass(frozen=True)
class SftData:
    train: list[Example]
    held_out: list[Example]
    dropped: int  # rows longer than the context
    path: str


# ---------------------------------------------------------------------------------------------
# Rows and tokens


def read_rows(path: str | Path) -> list[dict]:
    """The rows of accepted.jsonl; a broken line is an error naming the file and line."""
    path = Path(path)
    if not path.exists():
        raise SftDataError(
            f"{path}: SFT data file not found; run `exectune sample` first or set sft.data"
        )
    rows = [_check_row(row, path, lineno)
            for lineno, row in read_jsonl(path, appended=False, error=SftDataError, hint="fix or delete the line")]
    if not rows:
        raise SftDataError(f"{path}: no rows; acceptance sampling accepted nothing to train on")
    return rows


def _check_row(row: Any, path: Path, lineno: int) -> dict:
    where = f"{path}:{lineno}"
    if not isinstance(row, dict):
        raise SftDataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for key, kind in (("id", str), ("messages", list), ("completion", str)):
        if not isinstance(row.get(key), kind):
            raise SftDataError(
                f"{where}: field `{key}` must be a {kind.__name__} (got {row.get(key)!r:.60})"
            )
    for i, m in enumerate(row["messages"]):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str)):
            raise SftDataError(f"{where}: messages[{i}] must be {{role: str, content: str}}")
    return row


# Chat-template switches for every guide prompt. A guide's reply is the strategy itself, so
# templates with a reasoning mode (Qwen3) get it off: an empty think block, no thinking tokens.
# Templates that do not read a variable ignore it.
TEMPLATE_KWARGS = {"enable_thinking": False}


def encode_prompt(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> list[int]:
    """Token ids of the chat prompt, ending with the assistant turn header."""
    text = tokenizer.apply_chat_template(
        [dict(m) for m in messages], tokenize=False, add_generation_prompt=True, **TEMPLATE_KWARGS
    )
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_example(
    tokenizer: Any, messages: Sequence[Mapping[str, str]], completion: str, id: str = ""
) -> Example:
    """Prompt and completion tokenized apart (as at sampling time), EOS closing the completion."""
    prompt = encode_prompt(tokenizer, messages)
    answer = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    answer.append(tokenizer.eos_token_id)
    ids = np.asarray(prompt + answer, dtype=np.int32)
    mask = np.zeros(len(ids), dtype=np.int32)
    mask[len(prompt):] = 1
    return Example(id=id, inputs=ids[:-1], targets=ids[1:], loss_mask=mask[1:])


def split_ids(ids: Sequence[str], held_out: float, seed: int) -> set[str]:
    """Problem ids kept out of training, chosen by a seeded hash so splits are order-independent.

    Splitting by problem (not by row) keeps every strategy of a held-out problem out of training.
    """
    unique = sorted(set(ids))
    if held_out <= 0 or len(unique) < 2:
        return set()
    n = min(len(unique) - 1, max(1, math.ceil(held_out * len(unique))))
    key = lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest()  # noqa: E731
    return set(sorted(unique, key=key)[:n])


def load_sft_examples(
    path: str | Path, tokenizer: Any, seq_len: int, *, held_out: float = 0.0, seed: int = 0
) -> SftData:
    """Read, tokenize and split accepted.jsonl; rows that do not fit `seq_len` are dropped."""
    rows = read_rows(path)
    examples, too_long = [], []
    for row in rows:
        ex = encode_example(tokenizer, row["messages"], row["completion"], row["id"])
        (too_long if len(ex.inputs) > seq_len else examples).append(ex)
    if too_long:
        log.warning(
            "%s: dropped %d of %d rows longer than the context of %d tokens (longest %d); raise "
            "sft.seq_len to keep them", path, len(too_long), len(rows), seq_len,
            max(len(e.inputs) for e in too_long),
        )
    if not examples:
        raise SftDataError(
            f"{path}: every row is longer than sft.seq_len={seq_len} tokens; raise sft.seq_len"
        )
    held = split_ids([e.id for e in examples], held_out, seed)
    return SftData(
        train=[e for e in examples if e.id not in held],
        held_out=[e for e in examples if e.id in held],
        dropped=len(too_long),
        path=str(path),
    )


# ---------------------------------------------------------------------------------------------
# Packed batches


def _to_batch(packed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        "tokens": packed["inputs"].astype(np.int32),
        "positions": packed["inputs_positions"].astype(np.int32),
        "segment_ids": packed["inputs_segment_ids"].astype(np.int32),
        "targets": packed["targets"].astype(np.int32),
        "loss_mask": packed["loss_mask"].astype(np.int32),
    }


def _process_rows(batch_size: int, process_index: int, process_count: int):
    if batch_size % process_count:
        raise UserError(
            f"sft.batch_size={batch_size} must be a multiple of the {process_count} processes"
        )
    per = batch_size // process_count
    start = process_index * per
    return lambda b: {k: v[start:start + per] for k, v in b.items()}


def _pack(ds: grain.IterDataset, seq_len: int, bins: int) -> grain.IterDataset:
    length = dict.fromkeys(_PACKED, seq_len)
    return grain_x.FirstFitPackIterDataset(
        ds, length_struct=length, num_packing_bins=bins, shuffle_bins=False
    ).map(_to_batch)


def sft_dataset(
    examples: Sequence[Example],
    *,
    seq_len: int,
    batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.IterDataset:
    """Endless packed batches: shuffled each epoch, `batch_size` rows of `seq_len` tokens each."""
    if not examples:
        raise UserError("no SFT training examples (all rows held out or dropped)")
    ds = grain.MapDataset.source([e.as_dict() for e in examples])
    ds = ds.shuffle(seed=seed % 2**32).repeat(None).to_iter_dataset()
    ds = _pack(ds, seq_len, bins=batch_size).batch(batch_size, drop_remainder=True)
    return ds.map(_process_rows(batch_size, process_index, process_count))


def sft_iterator(examples: Sequence[Example], *, seq_len: int, batch_size: int, seed: int,
                 process_index: int | None = None, process_count: int | None = None):
    """A checkpointable grain iterator over `sft_dataset` for this JAX process."""
    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    ds = sft_dataset(examples, seq_len=seq_len, batch_size=batch_size, seed=seed,
                     process_index=process_index, process_count=process_count)
    return iter(ds)


def eval_batches(
    examples: Sequence[Example], *, seq_len: int, batch_size: int, process_index: int = 0,
    process_count: int = 1,
) -> list[dict[str, np.ndarray]]:
    """Every held-out example once, packed in file order; the last batch padded (loss_mask 0).

    Same shapes as training batches, so evaluation reuses one compiled program shape.
    """
    if not examples:
        return []
    ds = grain.MapDataset.source([e.as_dict() for e in examples]).to_iter_dataset()
    rows = list(_pack(ds, seq_len, bins=batch_size))
    while len(rows) % batch_size:
        rows.append({k: np.zeros_like(v) for k, v in rows[0].items()})
    mine = _process_rows(batch_size, process_index, process_count)
    return [
        mine({k: np.stack([r[k] for r in rows[i:i + batch_size]]) for k in BATCH_KEYS})
        for i in range(0, len(rows), batch_size)
    ]


# ---------------------------------------------------------------------------------------------
# RL prompts


def rl_prompt_iterator(problems: Sequence[Any], batch_size: int, seed: int):
    """Endless batches (lists) of `batch_size` problems, reshuffled every epoch; checkpointable.

    The iterator's `get_state()` / `set_state()` (or a Checkpointer's `data_iter`) restore the
    exact position, so a resumed RL run continues with the next unseen batch.
    """
    if not problems:
        raise UserError("no problems to train on: the task's train split is empty")
    if batch_size < 1:
        raise UserError(f"RL batch size must be >= 1, got {batch_size}")
    ds = grain.MapDataset.source(list(problems)).shuffle(seed=seed % 2**32).repeat(None)
    # grain's batch of one over an endless dataset overflows len() (an OverflowError at iter)
    batches = ds.batch(batch_size, batch_fn=list) if batch_size > 1 else ds.map(_one_problem)
    return iter(batches.to_iter_dataset())


def _one_problem(problem: Any) -> list:
    return [problem]
