"""io.read_jsonl is the package's one JSONL reader: a log's torn tail is not a row yet, a
dataset's last line is one even without its newline, .gz files read the same, and a bad line is
one error naming the file and line."""

import gzip
import json

import pytest

from exectune_jax.errors import UserError
from exectune_jax.io import append_jsonl, claim_dir, cut_torn_tail, read_jsonl, remove_path, swap_in_dir

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


def test_a_swapped_in_directory_replaces_the_old_one_which_waits_aside_until_removed(tmp_path):
    out, tmp = tmp_path / "guide", tmp_path / ".guide.tmp"
    out.mkdir()
    (out / "old.txt").write_text("old")
    tmp.mkdir()
    (tmp / "new.txt").write_text("new")
    old = swap_in_dir(tmp, out)
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"] and not tmp.exists()
    assert (old / "old.txt").read_text() == "old"  # kept until the caller removes it
    remove_path(old)
    assert not old.exists()
    fresh = tmp_path / ".fresh.tmp"
    fresh.mkdir()
    assert swap_in_dir(fresh, tmp_path / "fresh") is None and (tmp_path / "fresh").is_dir()


def test_claiming_a_directory_another_process_filled_keeps_the_first_and_drops_ours(tmp_path):
    out, ours = tmp_path / "base_guide", tmp_path / ".base_guide.tmp"
    ours.mkdir()
    (ours / "mine").write_text("2")
    out.mkdir()  # an empty directory is free to take
    assert claim_dir(ours, out) and (out / "mine").read_text() == "2"
    again = tmp_path / ".again.tmp"
    again.mkdir()
    (again / "mine").write_text("3")
    assert not claim_dir(again, out) and not again.exists()
    assert (out / "mine").read_text() == "2"
