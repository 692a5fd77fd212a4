"""metrics.jsonl: one JSON object a line, consistent after a resume; TensorBoard on demand."""

import json
import math

import numpy as np

from exectune_jax.train.metrics import MetricsWriter, read_metrics


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
