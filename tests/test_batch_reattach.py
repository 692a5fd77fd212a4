"""`exectune sample api.mode=batch` as a user runs it, against a separate `exectune serve-sim`:
killed while its batch is in flight and run again, it re-attaches instead of sending the work
again, and writes the same dataset as an online run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SIZES = ["task.options={n_train: 12, n_validation: 2, n_test: 2}", "sample.n_problems=12",
         "sample.proposals=2", "api.batch_poll_s=0.05", "api.batch_poll_max_s=0.2"]


def _exectune(*args: str, wait: bool = True):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "exectune_jax.cli", *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / "batches.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def serve_sim():
    server = _exectune("serve-sim", "sim.batch_delay_s=1.5", wait=False)
    lines = []
    while not (lines and lines[-1].startswith("  Anthropic")):
        line = server.stdout.readline()
        assert line, "serve-sim exited before printing its URLs"
        lines.append(line)
    root = lines[0].split()[-1]
    yield root, server
    server.send_signal(signal.SIGINT)
    server.wait(timeout=30)


def test_killed_batch_sample_reattaches_and_matches_the_online_dataset(serve_sim, tmp_path):
    root, server = serve_sim
    endpoints = [f"api.{name}.base_url={root}/v1" for name in ("core", "teacher", "judge", "core_strong")]
    run_dir = tmp_path / "batch"
    args = ["sample", f"run_dir={run_dir}", "api.mode=batch", *endpoints, *SIZES]
    first = _exectune(*args, wait=False)
    deadline = time.monotonic() + 120
    while not _records(run_dir):
        assert first.poll() is None, first.stdout.read()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed = _records(run_dir)[0]["id"]

    _exectune(*args)
    online = tmp_path / "online"
    _exectune("sample", f"run_dir={online}", *SIZES)

    server.send_signal(signal.SIGINT)
    log = server.communicate(timeout=30)[0]
    made = [line.split()[1] for line in log.splitlines() if line.startswith("batch ") and " created: " in line]
    records = _records(run_dir)
    created = [r["id"] for r in records if r["event"] == "created"]
    assert made == created and len(set(made)) == len(made)  # every batch made once, by a known record
    assert {"event": "done", "id": killed} in records  # the rerun finished the killed run's batch
    assert all(not r.get("lost") for r in records)
    for name in ("accepted.jsonl", "rejected.jsonl"):
        assert (run_dir / "sample" / name).read_text() == (online / "sample" / name).read_text()
    ledger = [json.loads(line) for line in (run_dir / "ledger.jsonl").read_text().splitlines()]
    assert ledger and all(row["batch"] for row in ledger if not row["cached"])
