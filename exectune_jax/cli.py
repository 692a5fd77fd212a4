"""`exectune`: one entry point, one subcommand per stage.

Every subcommand takes `--config FILE` (default: the embedded offline demo) plus dotted
`key=value` overrides, writes under `run_dir`, and resumes when run again with the same run_dir.
Stage modules are imported lazily so `exectune --help` is instant and errors stay local.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import sys
from pathlib import Path

from exectune_jax.config import Config, EndpointConfig, given, load_config, render, section_help
from exectune_jax.data import tasks
from exectune_jax.errors import UserError
from exectune_jax.io import RunLock
from exectune_jax.runtime import prepare_runtime

EPILOG = """\
examples:
  exectune demo --quick                                  # whole pipeline, offline, small sizes
  exectune demo --task code                              # the same on generated Python functions
  exectune serve-sim sim.latency_ms=200 sim.fault_rate=0.3
  exectune sample --config configs/demo.yaml run_dir=runs/a
  exectune sft --config configs/demo.yaml run_dir=runs/a sft.steps=100
  exectune rl --config configs/demo.yaml run_dir=runs/a rl.steps=20
  exectune eval --config configs/demo.yaml run_dir=runs/a
  exectune plan --config configs/gsm8k-qwen3-1.7b.yaml --config configs/tpu-v5e-8.yaml \
                --accelerator tpu-v5e-8
  exectune export runs/a/rl runs/a/export --dtype bf16
  exectune import SmolLM2-135M-Instruct.Q4_1.gguf guides/smollm2   # needs the [import] extra
  exectune config --config configs/demo.yaml sft.lr=1e-3   # resolved config, each field's doc
  exectune estimate --config configs/demo.yaml run_dir=runs/a --pilot 8
  exectune study run_dir=runs/study --seeds 0,1,2     # the demo per seed, mean ± sd, pooled tests
  exectune study run_dir=runs/study --sensitivity     # ablation (d): the demo in 12 more worlds
  exectune study run_dir=runs/rlv --rl-validation --candidate rl.lr=3e-5   # docs/rl.md's rule
  exectune study run_dir=runs/study --lambdas 0,30,100,300,1000   # RL's cost weight: the frontier

overrides are `section.key=value` (YAML values): run_dir=DIR, seed=1, sft.lr=3e-4,
api.core.model=claude-3-5-haiku-latest, mesh.fsdp=-1 ...
"""

TASK_HELP = ("the simulated world's task: math (task.name=arith, the default) or code "
             "(task.name=funcs: Python functions checked by hidden tests in the sandbox); "
             "another task is refused")

# commands that drive devices join a multi-process job when launched as one (launch/*.sh)
DISTRIBUTED = {"sft", "rl", "eval", "plan"}
# commands that pay for calls or write a run's stages hold its run_dir for their whole life
LOCKED = {"base-guide", "sample", "sft", "rl", "eval", "estimate", "demo", "study"}
# commands whose stage calls the APIs as configured get its "sim" endpoints served
# (sim.serving); the demo, the study and the estimate size their config first and serve that
SERVED = {"sample", "rl", "eval"}

# subcommand -> (module, function, help)
COMMANDS = {
    "demo": ("exectune_jax.demo", "run", "the whole pipeline end to end on the embedded default"),
    "serve-sim": ("exectune_jax.sim.server", "run", "serve the simulated core, teacher and judge on loopback"),
    "base-guide": ("exectune_jax.sim.guide", "run",
                   "build the demo's base guide in run_dir/base_guide (the demo's first stage)"),
    "sample": ("exectune_jax.train.acceptance", "run", "stage 1: teacher-guided acceptance sampling"),
    "sft": ("exectune_jax.train.sft", "run", "stage 2: supervised fine-tuning of the guide"),
    "rl": ("exectune_jax.train.grpo", "run", "stage 3: structure-aware GRPO"),
    "eval": ("exectune_jax.evaluate", "run", "the method table: accuracy, executability, cost"),
    "plan": ("exectune_jax.train.plan", "run", "compile ahead of time and report per-device memory"),
    "export": ("exectune_jax.export", "run", "write a Hugging Face checkpoint (and push it)"),
    "import": ("exectune_jax.models.importer", "run",
               "a GGUF file or an HF model directory as a guide directory our loader reads"),
    "config": ("exectune_jax.cli", "show_config", "print the resolved config with each field's doc"),
    "estimate": ("exectune_jax.estimate", "run", "projected calls, tokens and USD per stage, before paying"),
    "study": ("exectune_jax.study", "run", "the demo over several seeds: mean ± sd per row, per-seed and pooled tests"),
}
# the config sections each command's --help documents (`config --help`: all of them)
HELP_SECTIONS = {"serve-sim": ("sim",), "base-guide": ("sft",), "sample": ("sample",), "sft": ("sft",), "rl": ("rl",),
                 "eval": ("eval",), "plan": ("mesh",), "export": ("export",),
                 "demo": ("model", "task", "metrics"), "study": ("model", "task", "metrics")}


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", action="append", default=[], metavar="FILE",
                   help="YAML config; repeat to layer overlays, e.g. a task config then a "
                        "topology config (default: the embedded offline demo)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exectune",
        description="Train a small guide model to write strategies a black-box core can execute.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, (_, _, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=sections_help(name),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if name == "export":
            p.add_argument("source", help="a run directory, a stage directory or a checkpoint")
            p.add_argument("out", help="output directory for the HF checkpoint")
            p.add_argument("--push-to-hub", metavar="REPO_ID",
                           help="upload (token from $HF_TOKEN or `hf auth login`)")
            p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
            p.add_argument("--peft", metavar="DIR",
                           help="also write a LoRA run's adapters as a PEFT adapter directory")
            p.add_argument("--overwrite", action="store_true",
                           help="replace OUT (and the --peft DIR) even where exectune export did "
                                "not write it; without it only a new, empty or earlier export "
                                "directory is replaced")
        if name == "import":
            p.add_argument("source", help="a .gguf file or an HF model directory")
            p.add_argument("out", help="a new or empty output directory")
        if name == "demo":
            p.add_argument("--out", help="output directory (default: run_dir)")
            p.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
            p.add_argument("--task", metavar="{math,code}", help=TASK_HELP)
        if name == "study":
            p.add_argument("--seeds", default=None, help="comma-separated seeds, one demo each "
                           "in run_dir/seed-N (default: 0,1,2; with --sensitivity: 0)")
            p.add_argument("--quick", action="store_true", help="each seed at the demo's --quick sizes")
            p.add_argument("--task", metavar="{math,code}", help=TASK_HELP)
            p.add_argument("--ablations", action=argparse.BooleanOptionalAction, default=True,
                           help="per seed, also train and score outcome-only GRPO from the SFT "
                                "guide, ExecTune RL from the base guide, and SFT on strategies "
                                "accepted on the answer alone, the paper's acceptance "
                                "(default: on)")
            p.add_argument("--sensitivity", action="store_true",
                           help="instead, ablation (d): the demo in the worlds around the run's own, "
                                "one value changed at a time (teacher_habit_rate 0, 0.4, 0.8; "
                                "follow_compound 0.25, 0.55, 0.85; judge_false_yes 0, 0.15, 0.3; "
                                "judge_false_no 0, 0.04, 0.1; core_recovers and named_op_value "
                                "0, 0.5, 1), each in run_dir/sensitivity/<value>/seed-N, beside "
                                "each seed's demo in the run's own world; adds its tables and plot "
                                "to study.md")
            p.add_argument("--sweep", default=None, metavar="NAMES",
                           help="with --sensitivity: sweep only these world values (comma-separated, "
                                "e.g. judge_false_yes,judge_false_no)")
            p.add_argument("--rl-validation", action="store_true",
                           help="instead, the validation run of docs/rl.md: per seed, in "
                                "run_dir/rl-validation/seed-N, SFT then RL from that SFT guide "
                                "with the config as given and with the --candidate settings, "
                                "scored on the validation split; the rule's verdict in "
                                "run_dir/rl_validation.json and .md")
            p.add_argument("--lambdas", default=None, metavar="L1,L2,...",
                           help="instead, RL's cost weight swept (rl.weights.cost, reward units "
                                "per USD): per seed (0 unless --seeds), ExecTune RL from the demo's "
                                "exectune_sft at each λ in run_dir/seed-N/rl_lambda-<λ>, scored "
                                "beside the demo's rows in run_dir/seed-N/lambdas; the "
                                "accuracy-vs-USD frontier in study.md and study_pareto.png, the "
                                "region cheaper and better than the strong core marked")
            p.add_argument("--candidate", action="append", default=None, metavar="KEY=VALUE",
                           help="with --rl-validation (which needs one): the rl.* overrides "
                                "the candidate RL arm adds to the config, e.g. --candidate "
                                "'rl.problems=after_sample rl.max_extra_groups=8'; may repeat")
        if name == "sample":
            p.add_argument("--unfiltered", action="store_true",
                           help="keep every well-formed teacher strategy (the SFT-guide baseline)")
        if name == "estimate":
            p.add_argument("--pilot", type=int, default=8, metavar="N",
                           help="sample N training problems first to measure calls and output "
                                "lengths (cached: the run reuses them); 0 = stated defaults")
            p.add_argument("--demo", action="store_true", help="size and stage the run as `exectune demo`")
            p.add_argument("--quick", action="store_true", help="as `exectune demo --quick`")
            p.add_argument("--repeat", type=float, default=None, metavar="SHARE",
                           help="share of a trained guide's guided calls (RL, later guides at eval) "
                                "replayed free from the call cache (default: the measured 0.45; "
                                "0 = every call paid, an upper bound)")
            p.add_argument("--rl-pilot", type=int, default=None, metavar="K",
                           help="where an RL stage's start guide exists, sample RL's first K "
                                "batches from it locally and look their core requests up in the "
                                "call cache: the share replayed free, measured (default 8; 0 = "
                                "the stated share)")
        if name == "plan":
            p.add_argument("--accelerator", default=None,
                           help="named accelerator to check the fit against (e.g. tpu-v5e-8)")
        _add_config_args(p)
    return parser


def sections_help(command: str) -> str:
    """The docs of the config fields `command` reads: the text its --help ends with."""
    default = Config()
    if command == "config":
        names = [f.name for f in dataclasses.fields(Config)
                 if dataclasses.is_dataclass(getattr(default, f.name))]
        parts = [section_help(Config, ""), section_help(EndpointConfig, "api.<endpoint>.")]
    else:
        names, parts = list(HELP_SECTIONS.get(command, ())), []
    parts += [section_help(type(getattr(default, n)), n + ".") for n in names]
    return "\n\n".join(parts)


def show_config(cfg: Config, **_: object) -> int:
    """`exectune config`: the resolved config as YAML, each field with its doc."""
    print(render(cfg))
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Overrides may come anywhere, also after options (`export SRC OUT --dtype fp32 k=v`)."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    late = [a for a in rest if "=" in a and not a.startswith("-")]
    unknown = [a for a in rest if a not in late]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = [*getattr(args, "overrides", []), *late]
    return args


def prepare_stage(command: str, cfg) -> None:
    """Build what a stage starts from but may not build itself.

    SFT with no starting guide in the config starts from the demo base guide; its builder
    (`sim/guide.py`) is a user of the training library, so the CLI builds it, not the stage.
    """
    if command == "sft":
        # local import: stage modules load when the stage runs, so `exectune --help` stays instant
        from exectune_jax.train.sft import starts_from_base_guide

        if starts_from_base_guide(cfg):
            # local import: stage modules load when the stage runs, so `exectune --help` stays instant
            from exectune_jax import preflight
            from exectune_jax.sim.guide import ensure_base_guide

            preflight.check(cfg, "sft")  # before the base guide's warm-up, as before any work
            ensure_base_guide(cfg)


def held(command: str, cfg: Config, out: str | None) -> contextlib.AbstractContextManager:
    """The run_dir lock for the commands in LOCKED (on the demo's --out where given); only
    process 0 of a multi-process job takes it, as only it writes the run's shared files."""
    if command not in LOCKED or (command in DISTRIBUTED and _process_index() != 0):
        return contextlib.nullcontext()
    # local import: stage modules load when the stage runs, so `exectune --help` stays instant
    from exectune_jax import preflight

    run_dir = (out if command == "demo" and out else None) or cfg.run_dir
    preflight.writable_dir(Path(run_dir), "run_dir")  # the lock lives in it: check it first
    return RunLock(run_dir, command)


def served(command: str, cfg: Config) -> contextlib.AbstractContextManager[Config]:
    """The config the command runs with: for the commands in SERVED, its "sim" endpoints served
    by one embedded server for the command's life."""
    if command not in SERVED:
        return contextlib.nullcontext(cfg)
    # local import: stage modules load when the stage runs, so `exectune --help` stays instant
    from exectune_jax.sim import serving

    return serving(cfg)


def _process_index() -> int:
    import jax

    return jax.process_index()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prepare_runtime()
    module_name, func_name, _ = COMMANDS[args.command]
    try:
        cfg = load_config(args.config, args.overrides)
        if args.command in DISTRIBUTED:
            # local import: stage modules load when the stage runs, so `exectune --help` stays instant
            from exectune_jax.parallel import init_distributed

            init_distributed()
        func = getattr(importlib.import_module(module_name), func_name)
        extra = {k: v for k, v in vars(args).items()
                 if k not in ("command", "config", "overrides")}
        if extra.get("task") is not None:  # --task against a task.name the user gave, default or not
            extra["task_named"] = given(args.config, args.overrides, "task.name")
        with tasks.reading_as(args.command), held(args.command, cfg, extra.get("out")):
            prepare_stage(args.command, cfg)
            with served(args.command, cfg) as cfg:
                result = func(cfg, **extra)
    except UserError as e:
        print(f"exectune {args.command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"exectune {args.command}: interrupted; run the same command again to resume",
              file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
