"""io.read_jsonl is the package's one JSONL reader: a log's torn tail is not a row yet, a
dataset's last line is one even without its newline, .gz files read the same, and a bad line is
one error naming the file and line."""

import gzip
import json

import pytest

from exectune_jax.errors import UserError
from exectune_jax.io import append_jsonl, cut_torn_tail, read_jsonl

ROWS = [{"step": 1}, {"step": 2}]


def test_a_logs_torn_tail_is_left_out_and_cut_before_the_next_append(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text(json.dumps(ROWS[0]) + "\n" + '{"step": 2, "lo')  # a crash mid-append
    assert [row for _, row in read_jsonl(log)] == [ROWS[0]]
    cut_torn_tail(log)
    append_jsonl(log, ROWS[1])
    assert [row for _, row in read_jsonl(log)] == ROWS


def test_a_datasets_last_line_counts_without_its_newline_and_gz_reads_the_same(tmp_path):
    text = "\n".join(json.dumps(r) for r in ROWS)  # no newline at the end, as editors save it
    plain, packed = tmp_path / "data.jsonl", tmp_path / "data.jsonl.gz"
    plain.write_text(text)
    packed.write_bytes(gzip.compress(text.encode()))
    assert [row for _, row in read_jsonl(plain, appended=False)] == ROWS
    assert [row for _, row in read_jsonl(packed, appended=False)] == ROWS
    assert [row for _, row in read_jsonl(plain)] == ROWS[:1]  # read as a log, the tail is torn


def test_a_bad_line_is_one_error_of_the_callers_kind_naming_file_and_line(tmp_path):
    class DataError(ValueError):
        pass

    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n{not json\n")
    with pytest.raises(UserError, match=rf"^{path}:3: not valid JSON \(.+\); fix or remove that line$"):
        list(read_jsonl(path))
    with pytest.raises(DataError, match=rf"^{path}:3: not valid JSON .*; each line one object$"):
        list(read_jsonl(path, error=DataError, hint="each line one object"))
