"""`exectune demo`: the whole method end to end on the embedded offline default.

One loopback sim server (with the `sim` section's latency, rate limit and faults) stands in for
the core and teacher APIs for every stage; then: base guide -> acceptance sampling (filtered and
unfiltered) -> SFT on each -> advisor-style RL from the base guide and ExecTune RL from the
filtered SFT guide -> the method table -> HF export of the final guide.

Sizes: the demo picks sizes for a few CPU minutes (`--quick`: a smoke run of the plumbing). They
fill only fields the config left at their defaults, so any dotted override still wins. Each
stage writes its usual directory under the output dir and resumes from it when run again.
Stage chatter goes to logs/<stage>.log; the terminal shows one progress line per stage and the
closing table. results.json holds no timings or paths: the same seed gives the same file, with
or without injected API faults.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from exectune_jax.config import Config, dump

# Filled in only where the config still holds the default (dotted key -> value).
DEMO_SIZES: dict[str, Any] = {
    "task.options": {"n_train": 400, "n_validation": 32, "n_test": 200},
    "sample.n_problems": 200,
    "sft.steps": 200,
    "sft.eval_every": 0,
    "rl.steps": 12,
    "eval.n_problems": 200,
}
QUICK_SIZES: dict[str, Any] = {
    "task.options": {"n_train": 64, "n_validation": 8, "n_test": 48},
    "sample.n_problems": 48,
    "sample.proposals": 2,
    "sft.steps": 20,
    "sft.batch_size": 8,
    "sft.eval_every": 0,
    "sft.checkpoint_every": 20,
    "sft.base_guide": {"hidden_size": 64, "intermediate_size": 128, "num_layers": 2,
                       "warmup_steps": 20},
    "rl.steps": 2,
    "rl.group_size": 4,
    "rl.prompts_per_step": 4,
    "rl.core_only_samples": 2,
    "rl.checkpoint_every": 2,
    "eval.n_problems": 48,
}
OUTPUTS = ("results.json", "results.md", "accuracy_vs_cost.png", "rl_curves.png")


# ---------------------------------------------------------------------------------------------
# Config plumbing (pure)


def get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def with_values(cfg: Any, values: Mapping[str, Any]) -> Any:
    """`cfg` with dotted `section.field` keys replaced (nested dataclasses rebuilt, not mutated)."""
    for key, value in values.items():
        head, _, rest = key.partition(".")
        inner = with_values(getattr(cfg, head), {rest: value}) if rest else value
        cfg = dataclasses.replace(cfg, **{head: inner})
    return cfg


def sized(cfg: Config, sizes: Mapping[str, Any]) -> Config:
    """Apply `sizes` only where `cfg` still holds the default value."""
    default = Config()
    return with_values(cfg, {k: v for k, v in sizes.items() if get(cfg, k) == get(default, k)})


def with_sim_url(cfg: Config, root: str) -> Config:
    """Every endpoint that names the sim points at the one server the demo started."""
    from exectune_jax.config import SIM_URL
    from exectune_jax.sim.server import sim_base_url

    values = {}
    for name in ("core", "teacher", "judge", "core_strong"):
        ep = getattr(cfg.api, name)
        if ep is not None and ep.base_url == SIM_URL:
            values[f"api.{name}"] = dataclasses.replace(ep, base_url=sim_base_url(root, ep.provider))
    return with_values(cfg, values)


def stage_configs(cfg: Config) -> dict[str, Config]:
    """The config each stage runs with; stage directories follow the run-dir layout."""
    run_dir = Path(cfg.run_dir)
    return {
        "sample": with_values(cfg, {"sample.out": "sample"}),
        "sample_unfiltered": with_values(cfg, {"sample.out": "sample_unfiltered"}),
        "sft": with_values(cfg, {"sft.name": "sft",
                                 "sft.data": str(run_dir / "sample" / "accepted.jsonl")}),
        "sft_unfiltered": with_values(cfg, {
            "sft.name": "sft_unfiltered",
            "sft.data": str(run_dir / "sample_unfiltered" / "accepted.jsonl")}),
        "advisor_rl": with_values(cfg, {"rl.name": "advisor_rl", "rl.preset": "advisor",
                                        "rl.init": str(run_dir / "base_guide")}),
        "rl": with_values(cfg, {"rl.name": "rl", "rl.preset": "exectune",
                                "rl.init": str(run_dir / "sft" / "guide")}),
        "eval": cfg,
    }


# ---------------------------------------------------------------------------------------------
# Stages (side effects)


def export_guide(cfg: Config, out: Path) -> Path:
    """The final guide as a standalone HF checkpoint (the export command when available)."""
    source = Path(cfg.run_dir) / "rl" / "guide"
    try:
        from exectune_jax import export
    except ImportError:
        export = None
    if export is not None:
        export.run(cfg, source=str(source), out=str(out), push_to_hub=None, dtype="bf16")
        return out
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(source, out)
    return out


def _stage(module: str, func: str, *args: Any, **kwargs: Any) -> Callable[[], Any]:
    """A stage call whose module is imported only when the stage runs."""

    def call() -> Any:
        import importlib

        return getattr(importlib.import_module(module), func)(*args, **kwargs)

    return call


def stages(cfg: Config, out: Path) -> list[tuple[str, Callable[[], Any]]]:
    c = stage_configs(cfg)
    return [
        ("base guide", _stage("exectune_jax.sim.guide", "ensure_base_guide", cfg)),
        ("sample", _stage("exectune_jax.train.acceptance", "run", c["sample"])),
        ("sample --unfiltered", _stage("exectune_jax.train.acceptance", "run",
                                       c["sample_unfiltered"], unfiltered=True)),
        ("sft", _stage("exectune_jax.train.sft", "run", c["sft"])),
        ("sft_unfiltered", _stage("exectune_jax.train.sft", "run", c["sft_unfiltered"])),
        ("advisor_rl", _stage("exectune_jax.train.grpo", "run", c["advisor_rl"])),
        ("rl", _stage("exectune_jax.train.grpo", "run", c["rl"])),
        ("eval", _stage("exectune_jax.evaluate", "run", c["eval"])),
        ("export", lambda: export_guide(cfg, out / "export")),
    ]


@contextlib.contextmanager
def logged(path: Path):
    """Send a stage's own prints and progress bars to its log file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        yield


def run_stages(todo: list[tuple[str, Callable[[], Any]]], logs: Path, *,
               show: bool) -> dict[str, float]:
    """Run the stages in order under one progress bar; returns seconds per stage."""
    from tqdm.auto import tqdm

    seconds = {}
    bar = tqdm(total=len(todo), desc="demo", unit="stage", file=sys.stderr, disable=not show,
               bar_format="{desc} {n_fmt}/{total_fmt} |{bar:20}| {elapsed}")
    for name, fn in todo:
        bar.set_description(f"demo: {name}")
        start = time.perf_counter()
        log = logs / f"{name.replace(' --', '_').replace(' ', '_')}.log"
        try:
            with logged(log):
                fn()
        except BaseException:
            bar.close()
            tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
            print("\n".join(tail), file=sys.stderr)
            print(f"exectune demo: stage `{name}` stopped; its log is {log}. Run the same "
                  "command again to resume from the finished stages.", file=sys.stderr)
            raise
        seconds[name] = time.perf_counter() - start
        bar.write(f"  {name:<20} {seconds[name]:6.1f} s", file=sys.stderr)
        bar.update()
    bar.close()
    return seconds


def collect_outputs(cfg: Config, out: Path) -> list[Path]:
    """results.json, results.md and plots copied from eval/ to the top of the output dir."""
    found = []
    for name in OUTPUTS:
        src = Path(cfg.run_dir) / cfg.eval.out / name
        if src.exists():
            shutil.copyfile(src, out / name)
            found.append(out / name)
    return found


def closing_summary(out: Path, seconds: Mapping[str, float]) -> str:
    import json

    lines = [""]
    sample = out / "sample" / "summary.json"
    if sample.exists():
        acc = json.loads(sample.read_text())["chain_acceptance"]
        lines.append(f"acceptance sampling: {acc['rate']:.1%} of teacher proposal chains accepted "
                     f"[{acc['ci'][0]:.1%}, {acc['ci'][1]:.1%}] ({acc['k']}/{acc['n']})")
    lines += ["", (out / "results.md").read_text().rstrip(), ""]
    total = json.loads((out / "ledger_totals.json").read_text()) \
        if (out / "ledger_totals.json").exists() else None
    if total is not None:
        lines.append(f"API spend (simulated, prices read {total['prices_read_on']}): "
                     f"USD {total['usd']:.4f}")
    lines.append("time per stage: " + ", ".join(f"{k} {v:.0f}s" for k, v in seconds.items())
                 + f"; total {sum(seconds.values()):.0f}s")
    lines.append(f"outputs in {out}: results.json, results.md, plots, <stage>/metrics.jsonl, "
                 "export/ (the final guide), ledger.jsonl, logs/")
    return "\n".join(lines)


def prepare(cfg: Config, out: str | None, quick: bool) -> Config:
    """The demo's config: output dir, then sizes where the user did not choose."""
    if out is not None:
        cfg = with_values(cfg, {"run_dir": out})
    cfg = sized(cfg, QUICK_SIZES if quick else DEMO_SIZES)
    return cfg


def run(cfg: Config, out: str | None = None, quick: bool = False) -> int:
    from exectune_jax.sim.server import SimServer

    cfg = prepare(cfg, out, quick)
    root = Path(cfg.run_dir)
    root.mkdir(parents=True, exist_ok=True)
    dump(cfg, root / "demo_config.yaml")
    with SimServer.from_config(cfg.sim) as server:
        print(f"exectune demo{' --quick' if quick else ''}: sim API at {server.url}, "
              f"output in {root}", file=sys.stderr)
        staged = with_sim_url(cfg, server.url)
        seconds = run_stages(stages(staged, root), root / "logs", show=cfg.metrics.progress)
    collect_outputs(cfg, root)
    print(closing_summary(root, seconds))
    return 0
