"""Pre-flight: what a stage checks before its first paid call or device work.

`check(cfg, stage)` runs at the start of every stage (sample, sft, rl, eval, export and the
demo) and raises one `PreflightError` naming the field or file and the fix, so a mistake costs
seconds, not a billed teacher round or minutes of Hub retries:

- `run_dir` is a writable directory;
- a config sized for an accelerator (`mesh.platform`) finds one, not only CPU devices;
- `metrics.wandb` has the wandb package to log with;
- every guide the stage loads (`model.path`, `sft.init`, `rl.init`, the SFT hand-off) is a
  local directory with config.json, *.safetensors weights and tokenizer files; nothing is ever
  looked up on the Hub;
- every endpoint the stage calls has its key variable set and a price in the price table;
- every split and data file the stage reads has rows (the interval estimates need n >= 1).

Numeric fields are range-checked earlier, when the config is built (config.validate).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from exectune_jax import layout
from exectune_jax.api import providers
from exectune_jax.api.ledger import PriceError, load_prices
from exectune_jax.config import Config
from exectune_jax.data import tasks
from exectune_jax.errors import UserError

STAGES = ("sample", "sft", "rl", "eval", "export", "demo")
DEVICE_STAGES = ("sft", "rl", "eval", "demo")  # stages that compute on the mesh
INSTALLS = {"gpu": "pip install 'exectune-jax[cuda]'", "tpu": "pip install 'exectune-jax[tpu]'"}
WEIGHTS = "*.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


class PreflightError(UserError):
    """A stage that cannot start: what is missing and how to fix it, before anything is spent."""


def check(cfg: Config, stage: str, *, unfiltered: bool = False, out: str | None = None) -> None:
    """Every check `stage` needs, in the order a user fixes them; raises the first failure."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    if stage == "export":
        writable_dir(Path(out).parent if out else Path.cwd(), "the export's parent directory")
        return
    writable_dir(Path(cfg.run_dir), "run_dir")
    if stage in DEVICE_STAGES:
        accelerator(cfg.mesh.platform)
    if stage in ("sft", "rl", "demo") and cfg.metrics.wandb:
        require_wandb(cfg.metrics.wandb)
    for field, path, fix in guides(cfg, stage):
        guide_dir(path, field, fix)
    for name in endpoints(cfg, stage, unfiltered=unfiltered or cfg.sample.unfiltered):
        endpoint_ready(cfg, name)
    data(cfg, stage)


# ---------------------------------------------------------------------------------------------
# Files and devices


def writable_dir(path: Path, field: str) -> None:
    if "://" in str(path):  # a bucket: only the storage client can tell
        return
    if path.exists() and not path.is_dir():
        raise PreflightError(f"{field} {path}: is a file, not a directory; set {field}=DIR to a "
                             "new or existing directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PreflightError(f"{field} {path}: cannot create it ({e.strerror}); set {field}=DIR "
                             "to a directory you can write") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise PreflightError(f"{field} {path}: not writable; set {field}=DIR to a directory you "
                             "can write")


def require_wandb(project: str) -> Any:
    """The wandb module, or one line saying how to install it."""
    try:
        import wandb
    except ImportError:
        raise PreflightError(f"metrics.wandb={project} needs the wandb package: pip install "
                             "'exectune-jax[wandb]' (or set metrics.wandb=null)") from None
    return wandb


def accelerator(platform: str | None) -> None:
    """A config sized for GPUs or TPUs must not silently train on the CPU."""
    if platform is None:
        return
    import jax

    found = sorted({d.platform for d in jax.devices()})
    if platform in found:
        return
    if found == ["cpu"]:
        raise PreflightError(f"config sets mesh.platform={platform} but jax finds only CPU "
                             f"devices: install jax's {platform.upper()} build with "
                             f"{INSTALLS[platform]} (or set mesh.platform=null to run on CPU)")
    raise PreflightError(f"config sets mesh.platform={platform} but jax finds {', '.join(found)} "
                         f"devices; use the topology config for this machine")


def guides(cfg: Config, stage: str) -> list[tuple[str, Path, str]]:
    """(field, directory, how to get it) for every guide `stage` loads before training."""
    if stage == "sft":
        if cfg.sft.init:
            return [("sft.init", Path(cfg.sft.init), _download(cfg.sft.init))]
        path = cfg.model.path
        return [("model.path", Path(path), _download(path))] if path else []
    if stage == "rl":
        if cfg.rl.init:
            return [("rl.init", Path(cfg.rl.init), "set rl.init to a guide directory")]
        hand_off = Path(cfg.run_dir) / cfg.sft.name / "guide"
        return [("the SFT guide", hand_off, "run `exectune sft` first or set rl.init")]
    if stage == "demo" and cfg.model.path:
        return [("model.path", Path(cfg.model.path), _download(cfg.model.path))]
    return []


def _download(path: str) -> str:
    return (f"download the model there first: hf download ORG/{Path(path).name} --local-dir "
            f"{path} (or huggingface-cli download ORG/{Path(path).name} --local-dir {path}); "
            f"from a GGUF file: exectune import FILE.gguf {path}")


def guide_dir(path: Path, field: str, fix: str) -> None:
    """A local HF guide directory: config.json, safetensors weights and a tokenizer."""
    if not path.exists():
        raise PreflightError(f"{field} {path}: no such directory; {fix}")
    if not path.is_dir():
        raise PreflightError(f"{field} {path}: is a file, not an HF model directory; {fix}")
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json")
    if not any(path.glob(WEIGHTS)):
        missing.append("weights (*.safetensors)")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        missing.append("tokenizer files (tokenizer.json)")
    if missing:
        raise PreflightError(f"{field} {path}: no {', no '.join(missing)} there; {fix}")


# ---------------------------------------------------------------------------------------------
# Paid endpoints


def endpoints(cfg: Config, stage: str, *, unfiltered: bool = False) -> list[str]:
    """The api endpoints `stage` will call."""
    api = cfg.api
    used: list[str] = []
    if stage in ("sample", "demo"):
        used += ["teacher"] if unfiltered and stage == "sample" else ["teacher", "core"]
    if stage in ("rl", "demo"):
        used.append("core")
    if stage in ("eval", "demo"):  # each core executes every guide
        used += cfg.eval.cores
    executes = any(name != "teacher" for name in used)  # a core executes strategies
    follow_judged = cfg.api.follow_check == "judge" and executes  # every guided execution
    if follow_judged or (stage in ("rl", "demo") and reward_judged(cfg)):
        used.append("judge")
    if stage in ("eval", "demo") and cfg.eval.core_strong and api.core_strong is not None:
        used.append("core_strong")
    return list(dict.fromkeys(used))


def reward_judged(cfg: Config) -> bool:
    """Whether RL's reward weights the LLM judge. No preset in train/rewards.py weights it
    (tests/test_preflight.py holds them to that), so only `rl.weights.judge` can: preflight sits
    below the training stages that call it and reads the override, not the presets."""
    return cfg.rl.weights.get("judge", 0.0) > 0.0


def endpoint_ready(cfg: Config, name: str) -> None:
    ep = getattr(cfg.api, name)
    if ep is None:
        raise PreflightError(f"api.{name} is not set, and this stage calls it (rl.weights.judge "
                             f"> 0); set api.{name}={{model: ..., provider: ...}}"
                             + (" or api.follow_check=trace" if name == "judge" else ""))
    if providers.missing_key(ep):
        raise PreflightError(f"api.{name}.api_key_env names {ep.api_key_env}, which is not set; "
                             f"export {ep.api_key_env} with your key before the run (keys are "
                             "read only from the environment)")
    table = load_prices(cfg.api.prices)
    try:
        table.price(ep.model)
    except PriceError:
        raise PreflightError(
            f"api.{name}.model {ep.model!r} has no price in {table.source}; add "
            f"`{ep.model}: {{input_per_mtok: X, output_per_mtok: Y}}` under `models:` in a copy "
            "of it and pass api.prices=FILE") from None


# ---------------------------------------------------------------------------------------------
# Data


def data(cfg: Config, stage: str) -> None:
    """Every split and file the stage reads has at least one row.

    The demo checks its training split only: its eval stage, the one reader of the test split
    (data/tasks guards it), checks that split before its first call."""
    if stage == "sft":
        sft_data(cfg)
        return
    reads = {"sample": ["train"], "rl": ["train"] + (["validation"] if cfg.rl.held_out else []),
             "eval": [cfg.eval.split], "demo": ["train"]}[stage]

    task = tasks.get(cfg.task.name, **cfg.task.options)
    for split in reads:
        if not task.problems(split):
            raise PreflightError(
                f"task {cfg.task.name}: the {split} split that {stage} reads is empty "
                f"(task.options={_options(cfg)}); give the task more rows, or hold out fewer "
                "for validation (e.g. task.options.n_validation)")


def _options(cfg: Config) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in cfg.task.options.items()) + "}"


def sft_data(cfg: Config) -> None:
    path = layout.sft_data(cfg)
    fix = "run `exectune sample` first, or set sft.data to an accepted.jsonl"
    if not path.is_file():
        raise PreflightError(f"sft data {path}: not found; {fix}")
    with path.open("rb") as f:
        if not any(line.strip() for line in f):
            raise PreflightError(f"sft data {path}: no rows (acceptance sampling accepted "
                                 f"nothing); {fix} with rows")
