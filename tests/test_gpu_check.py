"""bench/gpu_check.py: the accelerator check runs end to end (--tiny, on CPU) and writes one
report; on a machine without what it needs it stops at once with one line naming it."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"
PARTS = ("torch", "jax", "torch_rl", "jax_rl")
PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "libtpu")


@pytest.mark.slow
def test_tiny_run_writes_one_report_with_every_part_measured(tmp_path):
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert set(report) == {"params", "shape", *PARTS}
    assert report["shape"]["tiny"] is True
    assert not [p for p in PARTS if "error" in report[p]], {p: report[p] for p in PARTS}
    assert set(report["jax"]) == {"device", "sft", "decode"}
    assert set(report["torch"]) == {"sft", "decode"}
    assert {"tokens_per_s", "mfu", "tflops"} <= set(report["jax"]["sft"])
    assert "new_tokens_per_s" in report["jax"]["decode"]
    phases = {"sample_s", "logprob_s", "update_s"}
    assert phases <= set(report["jax_rl"]["grpo"]) and phases <= set(report["torch_rl"]["grpo"])
    for name in ("sft_step", "grpo_step", "gpu_check"):
        assert any(line.startswith(f"{name}: ") for line in proc.stdout.splitlines()), name


@pytest.mark.skipif(any(importlib.util.find_spec(p) for p in PLUGINS),
                    reason="this machine has a JAX accelerator plugin: the full check would run")
def test_full_shape_without_an_accelerator_plugin_stops_with_one_line_naming_it(tmp_path):
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "missing package 'jax[cuda12]'" in proc.stderr
    assert not out.exists()
