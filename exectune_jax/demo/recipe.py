"""The demo's recipe: its stages, the phases that order them, the sizes it picks for its time
budget, and the config each stage runs with.

Sizes fill only fields the config left at their defaults, so any dotted override still wins.
Each stage runs one of the CLI's own commands (`stage_commands`) with its config file.

Transfer and adaptation (docs/cores.md): while `api.core_next` is set, the demo's eval executes
every guide with it too, and ExecTune RL runs from `exectune_sft` against it (`rl_next`, no new
teacher data); its guide is the row `exectune_next`, beside `exectune_sft` unadapted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from exectune_jax import layout
from exectune_jax.config import Config
from exectune_jax.errors import UserError

# ExecTune's acceptance in the demo: a strategy is kept only when the follow check says the core
# carried it out and its execution cost at most the core alone on the problem. Chosen on the
# validation split over three seeds (docs/world.md, "Acceptance"): +7.4 to +9.6 points over
# the paper's answer-only acceptance in every seed (the study keeps that one as its
# `sft_answer_only` ablation).
ACCEPTANCE: dict[str, Any] = {"sample.require_followed": True, "sample.max_cost_vs_core": 1.0}
# Filled in only where the config still holds the default (dotted key -> value).
DEMO_SIZES: dict[str, Any] = {
    # Chosen on the validation split, seeds 0 and 1 (docs/world.md, "Training problems"): 2,000
    # problems x 4 proposal chains gave exectune_sft 92.8 / 92.2% against 8,000 x 1's 91.8 /
    # 90.2% (the same 8,000 chains, ~7,200 accepted either way) for a quarter of the core-alone
    # calls.
    "task.options": {"n_train": 2000, "n_validation": 500, "n_test": 500},
    "sample.proposals": 4,
    # The fewest warm-up steps, doubling from 300, whose base guide passes the competence gate on
    # the validation split (docs/world.md, "Competence gate"): at 1,200, 98.8% of its advice
    # sentences are grounded and its advice carried out is right 85.2% of the time against the
    # core alone's 66.6% (300 steps: 30.6% and 0%; 600: 46.1% and 0.6%).
    "sft.base_guide": {"warmup_steps": 1200},
    # Re-chosen from the 1,200-step guide on the validation split, seeds 0 and 1 (docs/world.md,
    # "A faster recipe"): 600 steps gave 93.0 / 85.8% against 900's 87.2 / 87.8%, inside the best
    # one's interval in both seeds; 450 fell outside it in seed 1 (79.8%).
    "sft.steps": 600,
    "sft.lr": 2e-3,
    "sft.eval_every": 0,
    "sft.checkpoint_every": 250,
    "rl.steps": 30,
    "rl.held_out": 0,  # the eval stage measures every guide on the test split anyway
    **ACCEPTANCE,
}
# Per task, over DEMO_SIZES. The code task's demo (`--task code`) is sized for time, not chosen on
# validation, cut in an order written before any run (docs/world.md, "The code demo's clock"):
# each reply's code runs in the sandbox, and acceptance sampling checks ~6.5 replies per training
# problem (~2.5 distinct programs, each run once; bench/sandbox_reuse.py), so half arith's
# training problems halve sampling's sandboxed runs, and funcs' own 300 test problems cut eval's
# by two fifths. A function's strategies often all pass or all fail, so dynamic sampling's extra
# groups can take a third of an RL step: funcs trains on the groups it draws. Half the RL and SFT
# steps then bring the demo under 15 minutes on 2 cores.
TASK_SIZES: dict[str, dict[str, Any]] = {
    "funcs": {"task.options": {"n_train": 1000, "n_validation": 500, "n_test": 300},
              "rl.max_extra_groups": 0, "rl.steps": 15, "sft.steps": 300},
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
    "rl.max_extra_groups": 4,  # one batch's worth, as the default is at the demo's sizes
    "rl.core_only_samples": 2,
    "rl.checkpoint_every": 2,
    "rl.held_out": 0,
    "eval.n_problems": 48,
    **ACCEPTANCE,
}
# `--task` of the demo and the study -> task.name: the tasks the simulated world executes (its
# core solves arith's word problems and writes funcs' Python; the base guide reads either)
DEMO_TASKS: dict[str, str] = {"math": "arith", "code": "funcs"}
NEXT_CORE = "core_next"  # the endpoint the demo transfers its guides to
ADAPTED = "exectune_next"  # the eval row of the guide RL adapted to the next core
TRUTH_LOG = "sim_truth.jsonl"  # the sim server's ground truth of "followed", for the study


def with_task(cfg: Config, task: str | None, named: bool = False) -> Config:
    """`cfg` with `--task` as its task.name; refused in one line when the demo cannot run the
    task, or when `--task` and a task.name the user gave disagree (`named`: the config files or
    overrides name task.name, even at its default value)."""
    names = {**DEMO_TASKS, **{name: name for name in DEMO_TASKS.values()}}
    if task is not None:
        if task not in names:
            raise UserError(f"--task {task}: the demo runs the simulated world's tasks, "
                            f"{' or '.join(f'{k} ({v})' for k, v in DEMO_TASKS.items())}; "
                            "other tasks run stage by stage (exectune sample, sft, rl, eval)")
        if cfg.task.name != names[task] and (named or cfg.task.name != Config().task.name):
            raise UserError(f"--task {task} runs task.name={names[task]}, but the config sets "
                            f"task.name={cfg.task.name}; give one of them")
        cfg = with_values(cfg, {"task.name": names[task]})
    if cfg.task.name not in DEMO_TASKS.values():
        raise UserError(f"task.name={cfg.task.name}: the demo runs the simulated world's tasks, "
                        f"{' or '.join(f'{v} (--task {k})' for k, v in DEMO_TASKS.items())}; "
                        "other tasks run stage by stage (exectune sample, sft, rl, eval)")
    return cfg


def adapts(cfg: Config) -> bool:
    """Whether the demo adapts a guide to the next core: eval.cores lists it."""
    return NEXT_CORE in cfg.eval.cores


def phases(cfg: Config) -> tuple[tuple[tuple[str, ...], ...], ...]:
    """Phases run in order; the chains of a phase run side by side; a chain's stages run in
    order. The RL runs share one phase: each spends much of its time waiting on the core's
    server and on host-side scoring, so a third run beside two fills the cores they leave idle
    (the ablations' phase runs three RL-sized chains the same way)."""
    rl = (("advisor_rl",), ("rl",), ("rl_next",)) if adapts(cfg) else (("advisor_rl",), ("rl",))
    return (
        (("base_guide",), ("sample", "sample_unfiltered")),
        (("sft",), ("sft_unfiltered",)),
        rl,
        (("eval",),),
        (("export",),),
    )
def get(cfg: Any, key: str) -> Any:
    """The value at a dotted `section.field` key."""
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


def prepare(cfg: Config, out: str | None, quick: bool) -> Config:
    """The demo's config: output dir, the next core beside the core in eval (while api.core_next
    is set: `api.core_next=null` leaves it out), then sizes where the user did not choose."""
    if out is not None:
        cfg = with_values(cfg, {"run_dir": out})
    if cfg.sim.truth_log is None:
        cfg = with_values(cfg, {"sim.truth_log": str(Path(cfg.run_dir) / TRUTH_LOG)})
    if cfg.api.core_next is not None and cfg.eval.cores == Config().eval.cores:
        cfg = with_values(cfg, {"eval.cores": [*cfg.eval.cores, NEXT_CORE]})
    return sized(cfg, QUICK_SIZES if quick else {**DEMO_SIZES, **TASK_SIZES.get(cfg.task.name, {})})


def base_guide(cfg: Config) -> Path:
    """The untrained guide that SFT and advisor RL start from and the eval's `base_guide` row
    reads: `model.path` (a pretrained guide, e.g. an imported SmolLM2) when set, else the demo
    guide its base_guide stage builds in run_dir."""
    return Path(cfg.model.path) if cfg.model.path else layout.base_guide(cfg.run_dir)


def stage_configs(cfg: Config) -> dict[str, Config]:
    """The config each stage runs with; stage directories follow the run-dir layout."""
    run_dir = Path(cfg.run_dir)
    evaluated = cfg
    if cfg.model.path:  # eval.guides are relative to run_dir; model.path to the working directory
        evaluated = with_values(cfg, {"eval.guides": {
            **cfg.eval.guides, "base_guide": str(Path(cfg.model.path).resolve())}})
    configs = {
        "base_guide": cfg,
        "sample": with_values(cfg, {"sample.out": "sample"}),
        "sample_unfiltered": with_values(cfg, {"sample.out": "sample_unfiltered"}),
        "sft": with_values(cfg, {"sft.name": "sft",
                                 "sft.data": str(layout.accepted(run_dir, "sample"))}),
        "sft_unfiltered": with_values(cfg, {
            "sft.name": "sft_unfiltered",
            "sft.data": str(layout.accepted(run_dir, "sample_unfiltered"))}),
        "advisor_rl": with_values(cfg, {"rl.name": "advisor_rl", "rl.preset": "advisor",
                                        "rl.init": str(base_guide(cfg))}),
        "rl": with_values(cfg, {"rl.name": "rl", "rl.preset": "exectune",
                                "rl.init": str(layout.guide(run_dir, "sft"))}),
        "eval": evaluated,
        "export": cfg,
    }
    if adapts(cfg):
        configs["rl_next"] = with_values(cfg, {
            "rl.name": "rl_next", "rl.preset": "exectune", "rl.init": str(layout.guide(run_dir, "sft")),
            "api.core": getattr(cfg.api, NEXT_CORE)})
        configs["eval"] = with_values(evaluated, {
            "eval.guides": {**evaluated.eval.guides, ADAPTED: str(layout.guide(Path(), "rl_next"))}})
    return configs


def stage_commands(cfg: Config) -> dict[str, tuple[str, ...]]:
    """The CLI command each stage's process runs, before its `--config FILE`: the final guide
    is exported as a standalone HF checkpoint to run_dir/export."""
    run_dir = Path(cfg.run_dir)
    return {
        "base_guide": ("base-guide",), "sample": ("sample",),
        "sample_unfiltered": ("sample", "--unfiltered"), "sft": ("sft",), "sft_unfiltered": ("sft",),
        "advisor_rl": ("rl",), "rl": ("rl",), "rl_next": ("rl",), "eval": ("eval",),
        "export": ("export", str(layout.guide(run_dir, "rl")), str(run_dir / "export"),
                   "--dtype", "bf16"),
    }
