"""Training metrics: a JSONL file always, TensorBoard or Weights & Biases when asked, a progress bar.

`metrics.jsonl` is the record every later step (evaluation, plots, tests) reads, so each line is
one complete JSON object written with a single `write` on an O_APPEND descriptor: a run killed
mid-write never leaves half a line. After a resume, `truncate_after(step)` drops the lines the
killed run wrote past its last checkpoint, so the file tells one consistent story.

`metrics.wandb=PROJECT` also logs every record, and the resolved config, to a W&B run in the
stage directory (`WANDB_MODE=offline` keeps it local); a resumed stage continues the same run.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from exectune_jax.io import append_jsonl, read_jsonl, write_jsonl_atomic
from exectune_jax.preflight import require_wandb

METRICS_FILE = "metrics.jsonl"
WANDB_ID_FILE = "wandb_run_id"  # the stage's W&B run, so a resume logs into the same one


def _plain(value: Any) -> Any:
    """A JSON-safe scalar: numpy/jax numbers become floats/ints, non-finite floats become null."""
    if isinstance(value, (bool, str)) or value is None:
        return value
    if isinstance(value, int):
        return value
    if hasattr(value, "item"):
        value = value.item()
        if isinstance(value, (bool, int)):
            return value
    value = float(value)
    return value if math.isfinite(value) else None


def read_metrics(path: str | Path) -> list[dict]:
    """All records of a metrics.jsonl (a directory holding one is accepted too)."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.exists():
        return []
    return [row for _, row in read_jsonl(path)]


def wandb_run(project: str, directory: Path, name: str, config: Mapping[str, Any] | None) -> Any:
    """A W&B run for one stage directory: the same run id on every resume."""
    wandb = require_wandb(project)
    id_file = directory / WANDB_ID_FILE
    run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
    id_file.write_text(run_id + "\n")
    return wandb.init(project=project, name=name, id=run_id, resume="allow", dir=str(directory),
                      config=dict(config or {}), reinit="create_new")


class MetricsWriter:
    """`log(step, **scalars)` appends one JSON line (and TensorBoard / W&B scalars when enabled).

    `enabled=False` (e.g. on every process but the first of a multi-host run) makes it a no-op.
    `wandb` is a W&B project name; `config` (the resolved config as plain data) goes with it.
    """

    def __init__(self, directory: str | Path, tensorboard: bool = False, *, enabled: bool = True,
                 wandb: str | None = None, config: Mapping[str, Any] | None = None,
                 name: str | None = None):
        self.directory = Path(directory)
        self.path = self.directory / METRICS_FILE
        self.enabled = enabled
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(logdir=str(self.directory / "tensorboard"))
        if wandb:
            self._wandb = wandb_run(wandb, self.directory, name or self.directory.name, config)

    def log(self, step: int, **scalars: Any) -> None:
        if not self.enabled:
            return
        append_jsonl(self.path, {"step": int(step), "time": round(time.time(), 3),
                                 **{k: _plain(v) for k, v in scalars.items()}})
        numbers = {k: v for k, v in ((k, _plain(v)) for k, v in scalars.items())
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._tb is not None:
            for key, value in numbers.items():
                self._tb.add_scalar(key, value, int(step))
        if self._wandb is not None:
            self._wandb.log(numbers, step=int(step))

    def truncate_after(self, step: int) -> None:
        """Drop records with a step beyond `step` (written by a run that was then interrupted)."""
        if not self.enabled or not self.path.exists():
            return
        write_jsonl_atomic(self.path, [row for _, row in read_jsonl(self.path) if row["step"] <= step])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress_bar(total: int, *, initial: int = 0, desc: str = "", enabled: bool = True) -> tqdm:
    """A tqdm bar over optimizer steps (shows rate and ETA); set the loss with `set_postfix`."""
    return tqdm(
        total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True,
        unit="step", mininterval=0.5,
    )
