"""`exectune`: one entry point, one subcommand per stage.

Every subcommand takes `--config FILE` (default: the embedded offline demo) plus dotted
`key=value` overrides, writes under `run_dir`, and resumes when run again with the same run_dir.
Stage modules are imported lazily so `exectune --help` is instant and errors stay local.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from exectune_jax.config import load_config
from exectune_jax.errors import UserError

EPILOG = """\
examples:
  exectune demo --quick                                  # whole pipeline, offline, small sizes
  exectune serve-sim sim.latency_ms=200 sim.fault_rate=0.3
  exectune sample --config configs/demo.yaml run_dir=runs/a
  exectune sft --config configs/demo.yaml run_dir=runs/a sft.steps=100
  exectune rl --config configs/demo.yaml run_dir=runs/a rl.steps=20
  exectune eval --config configs/demo.yaml run_dir=runs/a
  exectune plan --config configs/gsm8k-qwen3-1.7b.yaml --config configs/tpu-v5e-8.yaml \
                --accelerator tpu-v5e-8
  exectune export runs/a/rl runs/a/export --dtype bf16

overrides are `section.key=value` (YAML values): run_dir=DIR, seed=1, sft.lr=3e-4,
api.core.model=claude-3-5-haiku-latest, mesh.fsdp=-1 ...
"""

# commands that drive devices join a multi-process job when launched as one (launch/*.sh)
DISTRIBUTED = {"sft", "rl", "eval", "plan"}

# subcommand -> (module, function, help)
COMMANDS = {
    "demo": ("exectune_jax.demo", "run", "the whole pipeline end to end on the embedded default"),
    "serve-sim": ("exectune_jax.sim.server", "run", "serve the simulated core and teacher on loopback"),
    "sample": ("exectune_jax.train.acceptance", "run", "stage 1: teacher-guided acceptance sampling"),
    "sft": ("exectune_jax.train.sft", "run", "stage 2: supervised fine-tuning of the guide"),
    "rl": ("exectune_jax.train.grpo", "run", "stage 3: structure-aware GRPO"),
    "eval": ("exectune_jax.evaluate", "run", "the method table: accuracy, executability, cost"),
    "plan": ("exectune_jax.train.plan", "run", "compile ahead of time and report per-device memory"),
    "export": ("exectune_jax.export", "run", "write a Hugging Face checkpoint (and push it)"),
}


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
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == "export":
            p.add_argument("source", help="a run directory, a stage directory or a checkpoint")
            p.add_argument("out", help="output directory for the HF checkpoint")
            p.add_argument("--push-to-hub", metavar="REPO_ID", help="upload (token from HF_TOKEN)")
            p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
            p.add_argument("--peft", metavar="DIR",
                           help="also write a LoRA run's adapters as a PEFT adapter directory")
        if name == "demo":
            p.add_argument("--out", help="output directory (default: run_dir)")
            p.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
        if name == "sample":
            p.add_argument("--unfiltered", action="store_true",
                           help="keep every well-formed teacher strategy (the SFT-guide baseline)")
        if name == "plan":
            p.add_argument("--accelerator", default=None,
                           help="named accelerator to check the fit against (e.g. tpu-v5e-8)")
        _add_config_args(p)
    return parser


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


def prepare_runtime() -> None:
    """Process-wide setup every command needs before JAX or grain start."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(
        Path.home() / ".cache" / "exectune-jax" / "xla"
    )
    os.environ["JAX_COMPILATION_CACHE_DIR"] = cache


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prepare_runtime()
    module_name, func_name, _ = COMMANDS[args.command]
    try:
        cfg = load_config(args.config, args.overrides)
        if args.command in DISTRIBUTED:
            from exectune_jax.parallel import init_distributed

            init_distributed()
        func = getattr(importlib.import_module(module_name), func_name)
        extra = {k: v for k, v in vars(args).items()
                 if k not in ("command", "config", "overrides")}
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
