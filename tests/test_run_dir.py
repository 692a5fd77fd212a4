"""A run directory under accidents: two processes, a dead endpoint, a lost or damaged call cache,
a full disk, a rerun with other settings. Each test drives the real CLI or pool over loopback."""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from exectune_jax import resume
from exectune_jax.api.cache import DamagedCache
from exectune_jax.api.pool import Request, open_pool
from exectune_jax.cli import main
from exectune_jax.config import load_config
from exectune_jax.io import RunLock
from exectune_jax.sim import serving
from exectune_jax.train import acceptance

HERE = Path(__file__).parent
SMALL = ["task.options={n_train: 6, n_validation: 0, n_test: 4}", "sample.n_problems=6",
         "sample.proposals=1", "sample.revisions=0", "api.max_retries=1", "api.backoff_base_s=0.001",
         "api.backoff_max_s=0.001", "metrics.progress=false"]


def dead_url() -> str:
    """A loopback URL nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def ledger_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "ledger.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def paid_twice(run_dir: Path) -> list[str]:
    keys = collections.Counter(r["key"] for r in ledger_rows(run_dir) if not r["cached"])
    return [k for k, n in keys.items() if n > 1]


def hold(run_dir: Path, stage: str) -> subprocess.Popen:
    """Another process holding the run_dir until its stdin closes."""
    code = (f"import sys\nfrom exectune_jax.io import RunLock\nwith RunLock({str(run_dir)!r}, {stage!r}):\n"
            "    print('held', flush=True)\n    sys.stdin.read()\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    return child


def test_a_second_stage_on_a_held_run_dir_is_refused_with_the_holders_pid_and_pays_nothing(tmp_path, capsys):
    run_dir = tmp_path / "run"
    holder = hold(run_dir, "sample")
    try:
        assert main(["sample", f"run_dir={run_dir}", *SMALL]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert f"pid {holder.pid} (exectune sample)" in err and "another run_dir" in err
        assert not (run_dir / "ledger.jsonl").exists() and not (run_dir / "sample").exists()
    finally:
        holder.communicate("")
    assert main(["sample", f"run_dir={run_dir}", *SMALL]) == 0  # released when its holder ends
    assert ledger_rows(run_dir) and not paid_twice(run_dir)


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    holder = hold(tmp_path, "rl")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with RunLock(tmp_path, "sft"):
        assert "exectune sft" in (tmp_path / ".lock").read_text()


def test_the_holder_and_the_stage_processes_it_starts_join_its_hold_and_no_one_else(tmp_path):
    """The demo's runner holds its run_dir while its stage processes run; a process it did not
    start (here: a stage process's own child) is still refused."""
    take = (f"from exectune_jax.io import RunLock\nwith RunLock({str(tmp_path)!r}, 'sample'):\n"
            "    print('joined')\n")
    started_by_a_stage = f"import subprocess, sys\nsys.exit(subprocess.run([sys.executable, '-c', {take!r}]).returncode)"
    with RunLock(tmp_path, "demo"):
        with RunLock(tmp_path, "sft"):  # the holder's own stage
            pass
        child = subprocess.run([sys.executable, "-c", take], capture_output=True, text=True)
        assert child.returncode == 0 and child.stdout.strip() == "joined", child.stderr
        assert "(exectune demo)" in (tmp_path / ".lock").read_text()  # still the holder's
        other = subprocess.run([sys.executable, "-c", started_by_a_stage], capture_output=True, text=True)
        assert other.returncode == 1 and "in use by pid" in other.stderr, other.stderr
    holder = hold(tmp_path, "rl")  # released: the next process takes it
    holder.communicate("")
    assert holder.returncode == 0


def test_sample_with_a_dead_core_exits_non_zero_naming_it_and_resumes_without_paying_twice(tmp_path, capsys):
    run_dir = tmp_path / "run"
    dead = ["api.core.provider=openai", f"api.core.base_url={dead_url()}"]
    assert main(["sample", f"run_dir={run_dir}", *SMALL, *dead]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "endpoint core" in err and "connection" in err and "max_failure_share" in err
    assert not (run_dir / "sample" / "accepted.jsonl").exists()  # nothing half-made is kept
    teacher_paid = len([r for r in ledger_rows(run_dir) if not r["cached"]])
    assert teacher_paid > 0

    assert main(["sample", f"run_dir={run_dir}", *SMALL]) == 0  # the core is back: resume
    rows = ledger_rows(run_dir)
    assert not paid_twice(run_dir)
    assert sum(r["cached"] and r["stage"] == "sample.teacher" for r in rows) == teacher_paid
    assert (run_dir / "sample" / "accepted.jsonl").exists()


def test_eval_writes_no_table_when_no_execution_is_scored(tmp_path, capsys):
    dead = ["api.core.provider=openai", f"api.core.base_url={dead_url()}", "api.core_strong=null",
            "eval.n_problems=4"]
    assert main(["eval", f"run_dir={tmp_path}", *SMALL, *dead]) == 2
    assert "endpoint core" in capsys.readouterr().err
    assert main(["eval", f"run_dir={tmp_path}", *SMALL, *dead, "api.max_failure_share=1"]) == 2
    assert "no execution was scored for core_only" in capsys.readouterr().err
    assert not (tmp_path / "eval" / "results.json").exists()


def test_estimate_refuses_to_project_from_a_pilot_whose_calls_failed(tmp_path, capsys):
    dead = ["api.core.provider=openai", f"api.core.base_url={dead_url()}"]
    assert main(["estimate", "--pilot", "2", f"run_dir={tmp_path}", *SMALL, *dead]) == 2
    err = capsys.readouterr().err
    assert "of the pilot's calls failed (connection" in err and "USD 0.0000" not in err
    assert not (tmp_path / "estimate.json").exists() and not (tmp_path / "estimate_pilot.json").exists()


def _calls(cfg, n: int) -> list:
    with serving(cfg) as served, open_pool(served, cfg.run_dir) as pool:
        return pool.map([Request("core", [("user", f"question {i}")], stage="eval") for i in range(n)])


def test_a_damaged_cache_is_one_line_and_a_deleted_one_is_rebuilt_from_the_ledger_without_paying(tmp_path):
    cfg = load_config(None, [f"run_dir={tmp_path}"])
    first = _calls(cfg, 12)
    assert all(r.ok and not r.cached for r in first)
    paid = len(ledger_rows(tmp_path))

    cache = tmp_path / "calls.sqlite"
    good = cache.read_bytes()
    cache.write_bytes(b"this is not a database" * 100)
    with pytest.raises(DamagedCache) as e:
        _calls(cfg, 12)
    assert len(str(e.value).splitlines()) == 1 and "move it aside" in str(e.value)

    cache.write_bytes(good)
    for path in tmp_path.glob("calls.sqlite*"):
        path.unlink()
    again = _calls(cfg, 12)
    assert [r.text for r in again] == [r.text for r in first]
    assert all(r.cached for r in again)  # replayed: restored from the ledger's replies
    assert sum(not r["cached"] for r in ledger_rows(tmp_path)) == paid


def sample(*overrides: str) -> int:
    """Acceptance sampling as the CLI runs it: its "sim" endpoints served for the call."""
    with serving(load_config(None, list(overrides))) as served:
        return acceptance.run(served)


def test_rerunning_sample_with_other_settings_is_refused(tmp_path):
    assert sample(f"run_dir={tmp_path}", *SMALL) == 0
    before = (tmp_path / "sample" / "accepted.jsonl").read_text()
    with pytest.raises(resume.ResumeError, match=r"sample.proposals 1 -> 2"):
        sample(f"run_dir={tmp_path}", *SMALL, "sample.proposals=2")
    assert (tmp_path / "sample" / "accepted.jsonl").read_text() == before
    assert sample(f"run_dir={tmp_path}", *SMALL, "api.budget_usd=5") == 0


def test_a_stage_whose_input_changed_since_it_started_is_refused(tmp_path):
    data = tmp_path / "accepted.jsonl"
    data.write_text('{"id": "a"}\n')
    stage = tmp_path / "sft"
    stage.mkdir()
    resume.record_inputs(stage, {"sft.data": data})
    resume.check_inputs(stage, {"sft.data": data})  # unchanged: goes on
    data.write_text('{"id": "b"}\n')
    with pytest.raises(resume.ResumeError, match="its input changed since the stage started: sft.data"):
        resume.check_inputs(stage, {"sft.data": data})


FULL_DISK = textwrap.dedent("""
    import json, os, subprocess, sys
    from pathlib import Path
    from exectune_jax.api.pool import Request, open_pool
    from exectune_jax.config import load_config
    from exectune_jax.errors import UserError

    mount, url = Path(sys.argv[1]), sys.argv[2]
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], check=True)
    run_dir = mount / "run"
    filler = mount / "filler"
    filler.write_bytes(b"x" * (8 * 1024 * 1024 - 160 * 1024))
    cfg = load_config(None, [f"run_dir={run_dir}", "api.concurrency=1", "api.core.provider=openai",
                             f"api.core.base_url={url}", "api.core.max_tokens=2000",
                             f"api.teacher.base_url={url}", f"api.judge.base_url={url}",
                             "api.core_strong=null", "api.core_next=null"])  # only the core is called
    asks = [Request("core", [("user", f"tell me a long story {i}")], stage="eval") for i in range(400)]
    try:
        with open_pool(cfg, run_dir) as pool:
            pool.map(asks)
        print("NO ERROR")
    except UserError as e:
        print("LINE", str(e))
    print("TMP", [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")])
    filler.unlink()
    with open_pool(cfg, run_dir) as pool:
        results = pool.map(asks)
    print("OK", all(r.ok for r in results))
    rows = [json.loads(line) for line in (run_dir / "ledger.jsonl").read_text().splitlines()]
    keys = [r["key"] for r in rows if not r["cached"]]
    print("PAID", len(keys), len(set(keys)))
""")


def test_a_full_disk_is_one_line_leaves_no_temp_files_and_nothing_paid_is_paid_again(tmp_path, sim_core_server):
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs user and mount namespaces (unshare -rm) to mount a small tmpfs")
    mount = tmp_path / "mnt"
    mount.mkdir()
    script = tmp_path / "full_disk.py"
    script.write_text(FULL_DISK)
    out = subprocess.run(["unshare", "-rm", sys.executable, str(script), str(mount), sim_core_server.url + "/v1"],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "no space left on the device" in lines["LINE"] and len(lines["LINE"].splitlines()) == 1
    assert lines["TMP"] == "[]"
    assert lines["OK"] == "True"
    paid, distinct = map(int, lines["PAID"].split())
    assert paid == distinct == 400  # every call paid exactly once, before and after the space ran out
    # the server answered each call once, or twice for the one whose ledger line found no space
    assert 400 <= sim_core_server.stats["requests"] <= 401


@pytest.fixture
def sim_core_server():
    from exectune_jax.sim.server import SimServer

    server = SimServer.from_config(load_config(None, []).sim)
    server.start()
    yield server
    server.stop()
