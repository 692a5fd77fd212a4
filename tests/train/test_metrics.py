"""metrics.jsonl: one JSON object a line, consistent after a resume; TensorBoard and W&B on demand."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from exectune_jax.train.metrics import WANDB_ID_FILE, MetricsWriter, read_metrics


def test_each_log_call_is_one_json_line_with_plain_numbers(tmp_path):
    w = MetricsWriter(tmp_path)
    w.log(1, loss=np.float32(2.5), tokens=np.int64(7), ok=True)
    w.log(2, loss=float("nan"), note="x")
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert (first["step"], first["loss"], first["tokens"], first["ok"]) == (1, 2.5, 7, True)
    assert second["loss"] is None and second["note"] == "x" and math.isfinite(second["time"])


def test_truncate_after_drops_records_past_the_resumed_step(tmp_path):
    w = MetricsWriter(tmp_path)
    for step in range(1, 6):
        w.log(step, loss=step)
    w.truncate_after(3)
    w.log(4, loss=40)
    kept = [(r["step"], r["loss"]) for r in read_metrics(tmp_path)]
    assert kept == [(1, 1), (2, 2), (3, 3), (4, 40)]


def test_disabled_writer_writes_nothing(tmp_path):
    MetricsWriter(tmp_path / "m", enabled=False).log(1, loss=1.0)
    assert not (tmp_path / "m").exists()


def test_tensorboard_events_are_written_when_enabled(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=True) as w:
        w.log(1, loss=1.0, note="text is skipped")
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def wandb_records(run_file: Path):
    """The records of an offline W&B run file (a LevelDB-style log of protobuf records)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, pos, block, buf = run_file.read_bytes(), 7, 32768, b""  # 7: the file's own header
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block never splits a record header: the rest is padding
            pos += left
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buf += data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


def finished_wandb_records(run_file: Path, wait_s: float = 120.0) -> list:
    """The run file's records once wandb's service has written its exit record.

    `run.finish()` returns when the service has handled the exit; its writer may still hold the
    file's last buffer for a moment on a loaded machine, so the test waits for the file to be
    complete (a bounded wait for a condition, not a timed assertion).
    """
    import time

    from google.protobuf.message import DecodeError

    deadline, kinds = time.monotonic() + wait_s, []
    while True:
        try:
            records = list(wandb_records(run_file))
            kinds = [r.WhichOneof("record_type") for r in records]
            if "exit" in kinds:
                return records
        except DecodeError:  # a record still being written
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{run_file} never got its exit record; records so far: {kinds}")
        time.sleep(0.1)


def test_wandb_offline_run_holds_the_metrics_and_the_resolved_config(tmp_path, monkeypatch):
    import json as jsonlib

    from exectune_jax.config import load_config, to_dict

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = load_config(None, ["sft.lr=0.25", "metrics.wandb=exectune-test"])
    with MetricsWriter(tmp_path / "sft", wandb=cfg.metrics.wandb, config=to_dict(cfg),
                       name="sft") as w:
        w.log(1, loss=2.5, lr=0.1, sample="text is not a metric")
        w.log(2, loss=1.5, lr=0.1)
    [run_file] = (tmp_path / "sft" / "wandb").glob("offline-run-*/run-*.wandb")
    history, config, project = {}, {}, None
    for record in finished_wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            project = record.run.project
            config.update({i.key: jsonlib.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            config.update({i.key: jsonlib.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            items = {i.key or "/".join(i.nested_key): jsonlib.loads(i.value_json)
                     for i in record.history.item}
            history[items["_step"]] = items
    assert project == "exectune-test"
    assert config["sft"]["lr"] == 0.25 and config["metrics"]["wandb"] == "exectune-test"
    assert {s: (h["loss"], h["lr"]) for s, h in history.items()} == {1: (2.5, 0.1), 2: (1.5, 0.1)}
    assert "sample" not in history[1]
    assert [r["step"] for r in read_metrics(tmp_path / "sft")] == [1, 2]


def test_a_resumed_stage_logs_into_the_same_wandb_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    ids = []
    for step in (1, 2):
        with MetricsWriter(tmp_path, wandb="exectune-test") as w:
            w.log(step, loss=1.0)
        ids.append((tmp_path / WANDB_ID_FILE).read_text().strip())
    runs = sorted(p.name for p in (tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert ids[0] == ids[1] and all(name == f"run-{ids[0]}.wandb" for name in runs)


def test_wandb_missing_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    import sys

    from exectune_jax.errors import UserError

    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(UserError, match=r"pip install 'exectune-jax\[wandb\]'"):
        MetricsWriter(tmp_path, wandb="p")
