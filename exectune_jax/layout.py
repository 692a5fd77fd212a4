"""Where every stage's files live under `run_dir`: the one module that knows.

```
run_dir/
  .lock                 the run_dir lock (io.RunLock), held by the stage running
  ledger.jsonl          every call, paid or replayed, with the reply of each paid one
  ledger_totals.json    per-stage totals, derived from ledger.jsonl
  calls.sqlite          the call cache (a copy: rebuilt from the ledger when lost)
  sandbox.jsonl         code checks' sandboxed results, read back by later checks (a copy)
  batches.jsonl         batch-API jobs in flight, for re-attaching after a restart
  estimate_pilot.json   the estimate's pilot measurement (RL's forecast reads it too)
  base_guide/           the demo's starting guide (HF directory)
  <sample.out>/         accepted.jsonl, rejected.jsonl, summary.json, config.yaml, inputs.json
  <sft.name>/, <rl.name>/
    config.yaml         the resolved config the stage ran with
    inputs.json         fingerprints of the stage's inputs (resume.py)
    checkpoints/        orbax steps
    guide/              the stage's hand-off: an HF directory the next stage reads
    metrics.jsonl
  <eval.out>/           results.json, results.md, plots
```
"""

from __future__ import annotations

from pathlib import Path

GUIDE_DIR, CHECKPOINT_DIR = "guide", "checkpoints"
BASE_GUIDE_DIR = "base_guide"
LOCK_FILE = ".lock"
STAGE_CONFIG, STAGE_INPUTS = "config.yaml", "inputs.json"


def lock(run_dir: str | Path) -> Path:
    return Path(run_dir) / LOCK_FILE


def ledger(run_dir: str | Path) -> Path:
    return Path(run_dir) / "ledger.jsonl"


def ledger_totals(run_dir: str | Path) -> Path:
    return Path(run_dir) / "ledger_totals.json"


def call_cache(run_dir: str | Path) -> Path:
    return Path(run_dir) / "calls.sqlite"


def sandbox_results(run_dir: str | Path) -> Path:
    return Path(run_dir) / "sandbox.jsonl"


def batch_log(run_dir: str | Path) -> Path:
    return Path(run_dir) / "batches.jsonl"


def estimate_pilot(run_dir: str | Path) -> Path:
    return Path(run_dir) / "estimate_pilot.json"


def base_guide(run_dir: str | Path) -> Path:
    return Path(run_dir) / BASE_GUIDE_DIR


def stage(run_dir: str | Path, name: str) -> Path:
    return Path(run_dir) / name


def guide(run_dir: str | Path, name: str) -> Path:
    """A training stage's hand-off guide."""
    return Path(run_dir) / name / GUIDE_DIR


def checkpoints(run_dir: str | Path, name: str) -> Path:
    return Path(run_dir) / name / CHECKPOINT_DIR


def metrics(run_dir: str | Path, name: str) -> Path:
    return Path(run_dir) / name / "metrics.jsonl"


def accepted(run_dir: str | Path, sample_out: str) -> Path:
    """The acceptance stage's dataset, SFT's default input."""
    return Path(run_dir) / sample_out / "accepted.jsonl"


def rejected(run_dir: str | Path, sample_out: str) -> Path:
    """The acceptance stage's rejected attempts, each with its reason."""
    return Path(run_dir) / sample_out / "rejected.jsonl"


def sample_summary(run_dir: str | Path, sample_out: str) -> Path:
    """The acceptance stage's summary: counts, reasons and spend; written last, so it marks the
    stage finished."""
    return Path(run_dir) / sample_out / "summary.json"


def sft_data(cfg) -> Path:
    """What SFT trains on: `sft.data`, else the accepted.jsonl of the config's sample stage.
    (Any object with the Config's `run_dir`, `sft.data` and `sample.out`: layout sits below
    config.)"""
    if cfg.sft.data:
        return Path(cfg.sft.data)
    return accepted(cfg.run_dir, cfg.sample.out)
