"""The demo's runner: each stage is one of the CLI's own commands in a process of its own
(`python -m exectune_jax.cli COMMAND ... --config FILE`), writing its usual directory under the
run dir and its chatter to logs/<stage>.log.

Stages that do not depend on each other run side by side: a tiny model's training step keeps
about one core busy, so on two cores the two SFT runs cost the wall time of one, and the RL runs,
which also wait on the core's server, share a phase. The terminal shows one progress line for
the whole run. The runner holds the run dir while its stage processes run; they join that hold
(`io.RunLock`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from exectune_jax import layout
from exectune_jax.config import Config, dump
from exectune_jax.demo.recipe import with_values
from exectune_jax.io import RunLock
from exectune_jax.sim import serving


class StageFailed(Exception):
    def __init__(self, stage: str, returncode: int, log: Path):
        super().__init__(f"stage `{stage}` exited with {returncode}; its log is {log}")
        self.stage, self.log = stage, log


def stage_steps(cfg: Config, command: str) -> tuple[Path, int] | None:
    """(metrics.jsonl, total steps) of a training stage, for the progress line."""
    if command == "sft":
        return layout.metrics(cfg.run_dir, cfg.sft.name), cfg.sft.steps
    if command == "rl":
        return layout.metrics(cfg.run_dir, cfg.rl.name), cfg.rl.steps
    return None


def progress_of(cfg: Config, command: str) -> str:
    """" 340/1000" from the stage's metrics.jsonl, or "" when it has no step count."""
    found = stage_steps(cfg, command)
    if found is None or not found[0].exists():
        return ""
    path, total = found
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 4096))
        lines = f.read().decode(errors="replace").splitlines()
    for line in reversed(lines):
        try:
            return f" {json.loads(line)['step']}/{total}"
        except (ValueError, KeyError, TypeError):
            continue
    return ""


class Runner:
    """Runs the phases' chains as child processes, keeping one status line up to date.

    `commands` gives each stage's CLI command words (the command, its arguments and options),
    to which the runner adds `--config` and the stage's config file.
    """

    def __init__(self, configs: Mapping[str, Config], logs: Path, *, show: bool,
                 commands: Mapping[str, Sequence[str]]):
        self.configs, self.logs, self.show, self.commands = configs, logs, show, commands
        self.phases = 0
        # a terminal gets one status line rewritten in place; a log file a line every half minute
        self.tty = sys.stderr.isatty()
        self._last_line = float("-inf")
        self.seconds: dict[str, float] = {}
        self.running: dict[str, subprocess.Popen] = {}
        self.failure: StageFailed | None = None
        self._lock = threading.Lock()
        self._started = time.perf_counter()

    def _chain(self, stages: Sequence[str]) -> None:
        for stage in stages:
            if self.failure is not None:
                return
            config_path = self.logs / f"{stage}.yaml"
            # the demo's status line replaces the stage's own bars, which would only clutter logs
            dump(with_values(self.configs[stage], {"metrics.progress": False}), config_path)
            log = self.logs / f"{stage}.log"
            start = time.perf_counter()
            with open(log, "a") as f:
                argv = [sys.executable, "-m", "exectune_jax.cli", *self.commands[stage],
                        "--config", str(config_path)]
                proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT)
                with self._lock:
                    self.running[stage] = proc
                code = proc.wait()
            with self._lock:
                del self.running[stage]
                self.seconds[stage] = time.perf_counter() - start
                if code != 0 and self.failure is None:
                    self.failure = StageFailed(stage, code, log)
            if code != 0:
                return
            self._say(f"  {stage:<18} done in {self.seconds[stage]:6.1f} s")

    def _say(self, text: str) -> None:
        if self.show:
            sys.stderr.write(("\r\033[K" if self.tty else "") + text + "\n")
            sys.stderr.flush()

    def _show_status(self, phase: int) -> None:
        if not self.show:
            return
        if self.tty:
            sys.stderr.write("\r\033[K" + self.status(phase))
        elif time.perf_counter() - self._last_line >= 30:
            self._last_line = time.perf_counter()
            sys.stderr.write(self.status(phase) + "\n")
        sys.stderr.flush()

    def status(self, phase: int) -> str:
        parts = []
        with self._lock:
            names = list(self.running)
        for stage in names:
            parts.append(stage + progress_of(self.configs[stage], self.commands[stage][0]))
        elapsed = time.perf_counter() - self._started
        return (f"demo [{phase + 1}/{self.phases}] {' | '.join(parts) or '...'}  "
                f"{int(elapsed // 60):02d}:{int(elapsed % 60):02d}")

    def run(self, phases: Sequence[Sequence[Sequence[str]]]) -> dict[str, float]:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.phases = len(phases)
        try:
            for i, chains in enumerate(phases):
                threads = [threading.Thread(target=self._chain, args=(c,), daemon=True)
                           for c in chains]
                for t in threads:
                    t.start()
                while any(t.is_alive() for t in threads):
                    if self.failure is not None:
                        self.stop_all()
                    self._show_status(i)
                    time.sleep(0.5)
                if self.failure is not None:
                    raise self.failure
        except BaseException:
            self.stop_all()
            raise
        finally:
            if self.show and self.tty:
                sys.stderr.write("\r\033[K")
        return self.seconds

    def stop_all(self) -> None:
        """End the stage processes this runner started (they resume on the next run)."""
        with self._lock:
            procs = list(self.running.values())
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def run_phases(cfg: Config, phases: Sequence[Sequence[Sequence[str]]],
               configs_of: Callable[[Config], dict[str, Config]],
               commands: Mapping[str, Sequence[str]]) -> dict[str, float] | None:
    """Hold the run dir, serve the config's "sim" endpoints (one server for every stage
    process) and run the phases' stage processes against it.

    Returns the seconds per stage, or None when a stage failed (its log's tail printed).
    """
    root = Path(cfg.run_dir)
    with RunLock(root, "demo"), serving(cfg) as served:
        print(f"exectune demo: core API at {served.api.core.base_url}, output in {root}",
              file=sys.stderr)
        configs = configs_of(served)
        runner = Runner(configs, root / "logs", show=cfg.metrics.progress, commands=commands)
        try:
            return runner.run(phases)
        except StageFailed as e:
            tail = e.log.read_text(errors="replace").splitlines()[-20:]
            print("\n".join(tail), file=sys.stderr)
            print(f"exectune demo: {e}. Run the same command again to resume from the "
                  "finished stages.", file=sys.stderr)
            return None
