"""Typed configuration: dataclass sections, YAML files, dotted `key=value` overrides.

Every `exectune` command takes `--config FILE` plus overrides such as `sft.steps=20`. A file may
name a `base:` file it extends (relative to itself), so per-model, per-task and per-topology
overlays stay small. Validation happens once, here: an unknown key or a value of the wrong type
is a `ConfigError` naming the key and the file (or `command line`) it came from. The defaults of
every section are the embedded offline default, so `Config()` alone runs the demo world.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import io
import math
import re
import textwrap
import tokenize
import types
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from exectune_jax.errors import UserError
from exectune_jax.world import world_from

PACKAGE_CONFIGS = Path(__file__).parent / "configs"
SIM_URL = "sim"  # an endpoint whose base_url is "sim" talks to the embedded loopback server


class ConfigError(UserError):
    """A user-fixable problem in a config file or override."""


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoraConfig:
    """Low-rank adapters (models/lora.py): with rank > 0 only the adapters train and checkpoint."""

    RANGES: ClassVar[dict[str, str]] = {"rank": "[0, inf)", "alpha": "(0, inf)",
                                        "dropout": "[0, 1)"}

    rank: int = 0  # r of every adapter; 0 = full fine-tuning (no adapters)
    alpha: float = 16.0  # adapter output scaled by alpha / rank (PEFT's lora_alpha)
    # dropout on each adapter's input in SFT steps (PEFT's lora_dropout); RL steps run without
    # it, as TRL's GRPO does by default, so the policy's ratio to its own sampler starts at 1
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))  # HF/PEFT names


@dataclass
class ModelConfig:
    """The guide model."""

    RANGES: ClassVar[dict[str, str]] = {"max_seq_len": "[1, inf)", "head_chunk": "[0, inf)"}

    path: str | None = None  # HF checkpoint dir; None = the embedded demo guide, built on first use
    dtype: str = "float32"  # compute dtype: float32 | bfloat16
    param_dtype: str = "float32"  # stored parameter dtype: float32 | bfloat16
    max_seq_len: int = 256  # prompt + strategy tokens the guide ever sees
    remat: str = "full"  # what training recomputes per block: none | full | save_dots
    head_chunk: int = 64  # positions per step of the loss head (train/head.py); 0 = all at once
    lora: LoraConfig = field(default_factory=LoraConfig)  # adapters for SFT and RL; rank 0 = off


@dataclass
class MeshConfig:
    """Device mesh; -1 fills the remaining devices."""

    RANGES: ClassVar[dict[str, str]] = {
        "data": "[-1, inf)",
        "fsdp": "[-1, inf)",
        "tensor": "[-1, inf)",
    }

    data: int = 1  # data-parallel replicas
    fsdp: int = -1  # parameter, optimizer and batch sharding
    tensor: int = 1  # tensor (model) parallel shards
    # the device kind this topology is sized for: gpu | tpu; None = any, CPU included. A stage
    # that finds only CPU devices for a gpu or tpu config stops and names the missing install
    platform: str | None = None


@dataclass
class TaskConfig:
    """The problems: a registered task and its options."""

    name: str = "arith"  # arith | gsm8k | humaneval | mbpp | kodcode | jsonl (any registered task)
    options: dict[str, Any] = field(default_factory=dict)  # keyword options of tasks.get(name, ...)


@dataclass
class EndpointConfig:
    """One black-box model. The key is read from the environment variable `api_key_env`."""

    RANGES: ClassVar[dict[str, str]] = {
        "max_tokens": "[1, inf)",
        "temperature": "[0, 2]",
        "timeout_s": "(0, inf)",
    }

    provider: str = "openai"  # openai (any OpenAI-compatible server) | anthropic
    base_url: str = SIM_URL  # the API's root URL, with or without /v1; "sim" = the embedded loopback server
    model: str = "sim-core"  # the provider's model name (priced by api.prices)
    api_key_env: str | None = None  # environment variable holding the key; None = no key
    max_tokens: int = 512  # reply token limit per call
    temperature: float = 0.0  # sampling temperature of the replies
    timeout_s: float = 60.0  # per HTTP call


@dataclass
class ApiConfig:
    """Everything that talks to paid black-box models goes through one pool with these limits."""

    RANGES: ClassVar[dict[str, str]] = {
        "concurrency": "[1, inf)",
        "rpm": "(0, inf)",
        "tpm": "(0, inf)",
        "max_retries": "[0, inf)",
        "backoff_base_s": "[0, inf)",
        "backoff_max_s": "[0, inf)",
        "circuit_breaker_failures": "[1, inf)",
        "circuit_breaker_cooldown_s": "[0, inf)",
        "budget_usd": "[0, inf)",
        "batch_poll_s": "(0, inf)",
        "batch_poll_max_s": "(0, inf)",
        "max_failure_share": "[0, 1]",
    }

    core: EndpointConfig = field(default_factory=EndpointConfig)  # executes the strategies
    teacher: EndpointConfig = field(  # proposes and revises strategies (stage 1)
        default_factory=lambda: EndpointConfig(model="sim-teacher", temperature=1.0)
    )
    # reads (problem, strategy, response): did the core follow? Also the optional LLM judge of
    # rl.weights.judge
    judge: EndpointConfig | None = field(
        default_factory=lambda: EndpointConfig(model="sim-judge", max_tokens=64)
    )
    core_strong: EndpointConfig | None = field(  # a bigger core: a reference row in eval
        default_factory=lambda: EndpointConfig(model="sim-core-strong")
    )
    concurrency: int = 32  # calls in flight at once
    rpm: float | None = None  # requests per minute; None = unlimited
    tpm: float | None = None  # tokens per minute; None = unlimited
    max_retries: int = 8  # per call, for 408/409/429/5xx, timeouts and connection errors
    backoff_base_s: float = 0.05  # first retry delay (doubles per retry, with jitter)
    backoff_max_s: float = 10.0  # longest retry delay
    circuit_breaker_failures: int = 50  # consecutive failures that open the breaker
    circuit_breaker_cooldown_s: float = 5.0  # how long an open breaker refuses calls
    budget_usd: float | None = None  # stop starting new calls past this spend
    # a stage whose calls failed (after retries) above this share of its requests exits
    # non-zero: failed calls are never scored, so a stage mostly made of them measured nothing
    max_failure_share: float = 0.05
    prices: str | None = None  # price table YAML; None = the packaged configs/prices.yaml
    # estimator of "followed" behind executability: judge (api.judge reads each guided
    # execution; one call each) | trace (math: the core's step lines, checked; no extra call)
    follow_check: str = "judge"
    mode: str = "online"  # online | batch (half price, may wait): sample and eval calls; RL is always online
    stage_modes: dict[str, str] = field(default_factory=dict)  # per stage name or suffix: {core_alone: online}
    batch_poll_s: float = 0.5  # first wait before polling a batch; doubles up to batch_poll_max_s
    batch_poll_max_s: float = 60.0  # longest wait between two polls of a batch


@dataclass
class SimConfig:
    """The embedded loopback server standing in for the core, teacher and judge APIs."""

    RANGES: ClassVar[dict[str, str]] = {
        "port": "[0, 65535]",
        "latency_ms": "[0, inf)",
        "rpm": "(0, inf)",
        "fault_rate": "[0, 1)",
        "seed": "[0, inf)",
        "batch_delay_s": "[0, inf)",
        "batch_expire_s": "(0, inf)",
    }

    host: str = "127.0.0.1"  # address to listen on
    port: int = 0  # 0 = a free port
    latency_ms: float = 0.0  # added to every reply
    rpm: float | None = None  # answer 429 with Retry-After above this rate
    fault_rate: float = 0.0  # fraction of requests answered with an injected fault
    seed: int = 0  # of faults, and of sampled (temperature > 0) answers: the teacher's samples differ per seed
    # JSONL where the server records whether sim-core really followed each strategy it was given
    # (the ground truth the follow-check estimators are measured against; it never travels
    # through the API); None = not recorded
    truth_log: str | None = None
    batch_delay_s: float = 0.0  # seconds a batch takes to process (its items finish evenly over it)
    batch_expire_s: float | None = None  # a batch unfinished this long after creation expires; None = 24 h
    # Values of the simulated world other than the default's (`WorldSpec` in world.py, each
    # value's meaning in docs/world.md): a field -> value (a core profile: some of its fields; a
    # style mix: every style -> weight), plus `teacher_habit_rate`, the compound share of
    # `teacher_habit` (its other styles rescaled to keep their proportions). {} = the default
    # world. The server runs this world and results.json records its hash and these overrides;
    # a run_dir holds one world (its call cache answers in the world it was filled in).
    world: dict[str, Any] = field(default_factory=dict)


@dataclass
class SampleConfig:
    """Stage 1: teacher-guided acceptance sampling."""

    RANGES: ClassVar[dict[str, str]] = {
        "proposals": "[1, inf)",
        "revisions": "[0, inf)",
        "verify_samples": "[1, inf)",
        "max_cost_vs_core": "(0, inf)",
        "n_problems": "[1, inf)",
    }

    proposals: int = 4  # K strategies proposed per problem
    revisions: int = 2  # R teacher revisions of a failed strategy
    verify_samples: int = 1  # core executions that must all be correct to accept
    # ... and, when set, cost at most this multiple of the core alone on the problem (one more
    # core call per problem). A strategy the core cannot follow is ignored and costs the core's
    # own attempt plus its tokens; null (the paper's acceptance) keeps it when the answer is right.
    max_cost_vs_core: float | None = None
    n_problems: int | None = None  # None = the whole train split
    unfiltered: bool = False  # keep every well-formed strategy (the "SFT guide" baseline)
    out: str = "sample"  # stage directory under run_dir: accepted.jsonl, rejected.jsonl, summary.json
    require_followed: bool = False  # accept only strategies the follow check says the core followed


@dataclass
class SftConfig:
    """Stage 2: supervised fine-tuning on (problem, strategy) pairs."""

    RANGES: ClassVar[dict[str, str]] = {
        "steps": "[1, inf)",
        "batch_size": "[1, inf)",
        "seq_len": "[8, inf)",
        "lr": "(0, inf)",
        "warmup_steps": "[0, inf)",
        "weight_decay": "[0, inf)",
        "clip_norm": "[0, inf)",
        "grad_accum": "[1, inf)",
        "eval_every": "[0, inf)",
        "checkpoint_every": "[0, inf)",
        "keep_checkpoints": "[1, inf)",
        "held_out": "[0, 1)",
        "eval_problems": "[0, inf)",
        "eval_max_new_tokens": "[1, inf)",
    }

    name: str = "sft"  # stage directory under run_dir (the demo also trains "sft_unfiltered")
    data: str | None = None  # accepted.jsonl; None = run_dir/<sample.out>/accepted.jsonl
    init: str | None = None  # HF guide to start from; None = model.path (or the demo base guide)
    steps: int = 200  # optimizer steps
    batch_size: int = 8  # packed rows of seq_len tokens per micro-batch (global, all processes)
    seq_len: int = 256  # tokens per packed row
    lr: float = 3e-3  # peak; tuned for the demo guide (use ~1e-5 for a 1-2B model)
    warmup_steps: int = 10  # linear warm-up, then cosine decay to 10% of lr
    weight_decay: float = 0.01  # AdamW, on matrices only
    clip_norm: float = 1.0  # global gradient norm clip; 0 = off
    grad_accum: int = 1  # micro-batches averaged per optimizer step
    eval_every: int = 100  # eval loss + strategy validity every N steps (and at the end); 0 = never
    checkpoint_every: int = 50  # steps between checkpoints (and at the end); 0 = end only
    keep_checkpoints: int = 2  # newest checkpoints kept
    held_out: float = 0.05  # fraction of accepted problems kept out of training for the eval loss
    eval_problems: int = 16  # validation problems the guide greedily writes strategies for
    eval_max_new_tokens: int = 160  # strategy token budget when checking validity
    # demo guide size and warm-up: overrides of train/warmup.py BaseGuideSpec (used when building it)
    base_guide: dict[str, Any] = field(default_factory=dict)


@dataclass
class RlConfig:
    """Stage 3: structure-aware GRPO (symbols as in the paper: G, beta, epsilon, mu)."""

    RANGES: ClassVar[dict[str, str]] = {
        "steps": "[1, inf)",
        "group_size": "[2, inf)",
        "prompts_per_step": "[1, inf)",
        "beta": "[0, inf)",
        "clip_eps": "(0, inf)",
        "mu": "[1, inf)",
        "lr": "(0, inf)",
        "max_new_tokens": "[1, inf)",
        "temperature": "(0, inf)",
        "top_p": "(0, 1]",
        "staleness": "[0, inf)",
        "core_only_samples": "[1, inf)",
        "checkpoint_every": "[1, inf)",
        "keep_checkpoints": "[1, inf)",
        "micro_batch": "[0, inf)",
        "warmup_steps": "[0, inf)",
        "weight_decay": "[0, inf)",
        "clip_norm": "[0, inf)",
        "judge_max_tokens": "[1, inf)",
        "held_out": "[0, inf)",
        "forecast_batches": "[0, inf)",
        "std_floor": "[0, inf)",
        "cost_resolution_usd": "[0, inf)",
    }

    name: str = "rl"  # stage directory under run_dir (the demo also trains "advisor_rl")
    steps: int = 40  # GRPO steps (one batch of prompts each)
    group_size: int = 8  # G
    prompts_per_step: int = 8  # P problems per step
    beta: float = 0.04  # KL weight to the frozen reference
    clip_eps: float = 0.2  # epsilon of the clipped ratio objective
    mu: int = 1  # policy updates per batch
    lr: float = 1e-4  # the demo guide's (3e-4 undid its SFT accuracy); a 1.7B guide wants ~1e-6
    max_new_tokens: int = 96  # strategy token budget per sample
    temperature: float = 1.0  # sampling temperature of the guide
    top_p: float = 1.0  # nucleus sampling; 1 = off
    staleness: int = 1  # batches the sampler may run ahead of labelling; 0 = synchronous
    preset: str = "exectune"  # exectune | advisor
    weights: dict[str, float] = field(default_factory=dict)  # overrides of the preset's weights
    core_only_samples: int = 4  # samples per problem to estimate core-alone success
    # advantage estimator (train/advantages.py, derivation in docs/rl.md): grpo (divide by each
    # group's std) | dr_grpo (reward units: each reward weight acts as written) | batch (one
    # std for the batch). grpo until the validation run of docs/rl.md decides; the candidate is
    # dr_grpo with std_floor 0.1 and cost_resolution_usd 0.0001
    advantage: str = "grpo"
    std_floor: float = 0.0  # reward units: grpo and batch divide by at least this spread
    # USD: a group whose rewards differ by less than what this costs (times the cost weight)
    # has no spread and teaches nothing, so token-count noise in the core's bill moves no weight
    cost_resolution_usd: float = 0.0
    init: str | None = None  # HF guide to start from (and the KL reference); None = run_dir/sft/guide
    checkpoint_every: int = 10  # steps between checkpoints (and at the end)
    keep_checkpoints: int = 2  # newest checkpoints kept
    micro_batch: int = 16  # sequences per forward/backward pass (bounds activations); 0 = all
    warmup_steps: int = 0  # linear warm-up of lr, in updates
    weight_decay: float = 0.0  # AdamW, on matrices only
    clip_norm: float = 1.0  # global gradient norm clip; 0 = off
    judge_max_tokens: int = 8  # the optional LLM judge replies with one number
    held_out: int = 64  # validation problems for the before/after accuracy report; 0 = none
    # RL's first batches sampled locally at a fresh start: the cache replays they would get
    # forecast what the stage pays, printed before its first paid call (train/forecast.py; also
    # `exectune estimate --rl-pilot`); 0 = none. A problem's group repeats together, so the
    # pilot's size is its problems: on the SFT guide of a demo at earlier sizes (one proposal
    # chain per problem) 2 batches measured 62% replayed, 8 batches 71%, and RL then replayed
    # 74% over its 30 steps; at the demo's current sizes 8 batches 88%, RL 88.7%.
    forecast_batches: int = 8


@dataclass
class EvalConfig:
    """The method table: every guide, and the core alone, on the same problems."""

    RANGES: ClassVar[dict[str, str]] = {
        "n_problems": "[1, inf)",
        "samples": "[1, inf)",
        "max_new_tokens": "[1, inf)",
        "batch_size": "[1, inf)",
        "guide_usd_per_mtok": "[0, inf)",
    }

    split: str = "test"  # the task split scored: test | validation | train
    n_problems: int | None = None  # None = the whole split
    samples: int = 1  # core executions per (problem, strategy)
    max_new_tokens: int = 96  # guide token budget per strategy
    # method -> guide HF dir (relative to run_dir unless absolute); a missing dir skips the row
    guides: dict[str, str] = field(default_factory=lambda: {
        "base_guide": "base_guide", "sft_unfiltered": "sft_unfiltered/guide",
        "exectune_sft": "sft/guide", "advisor_rl": "advisor_rl/guide", "exectune": "rl/guide"})
    advisor_methods: list[str] = field(default_factory=lambda: ["advisor_rl"])  # free-form prompts
    core_strong: bool = True  # add the bigger core alone (when api.core_strong is set)
    batch_size: int = 64  # guide prompts generated together
    out: str = "eval"  # stage directory under run_dir: results.json, results.md, plots
    guide_usd_per_mtok: float = 0.0  # the self-hosted guide's cost per million generated tokens (break-even)


@dataclass
class MetricsConfig:
    """What a training stage reports besides metrics.jsonl."""

    tensorboard: bool = False  # TensorBoard event files in <stage>/tensorboard
    progress: bool = True  # a progress bar on the terminal
    wandb: str | None = None  # W&B project to log metrics and the resolved config to; None = off


@dataclass
class ResumeConfig:
    """What a resumed stage may differ in from the config it started with."""

    # dotted fields (e.g. [sft.lr]) a resume may change; a change in any other field that
    # alters the run stops the stage
    allow_changes: list[str] = field(default_factory=list)


@dataclass
class ExportConfig:
    """The exported guide's model card."""

    license: str = "apache-2.0"  # the card's `license:` (Hub license id); match the base model's


@dataclass
class Config:
    RANGES: ClassVar[dict[str, str]] = {"seed": "[0, inf)"}

    run_dir: str = "runs/demo"  # every stage writes under here; the same run_dir resumes
    seed: int = 0  # data order, splits, sampling and initialisation
    model: ModelConfig = field(default_factory=ModelConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    sft: SftConfig = field(default_factory=SftConfig)
    rl: RlConfig = field(default_factory=RlConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    resume: ResumeConfig = field(default_factory=ResumeConfig)
    export: ExportConfig = field(default_factory=ExportConfig)


def resolve_config_path(path: str | Path) -> Path:
    """A path as given, else relative to the packaged configs/ (so `configs/demo.yaml` works anywhere)."""
    p = Path(path)
    if p.exists():
        return p
    for candidate in (PACKAGE_CONFIGS / p, PACKAGE_CONFIGS / p.name):
        if candidate.exists():
            return candidate
    raise ConfigError(f"config file {path}: not found (looked here and in {PACKAGE_CONFIGS})")


def read_yaml(path: Path, _seen: tuple[Path, ...] = ()) -> list[tuple[dict, str]]:
    """The layers of one file, base first, each with the file it came from."""
    path = path.resolve()
    if path in _seen:
        raise ConfigError(f"config file {path}: `base:` chain loops back to itself")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping of sections")
    base = data.pop("base", None)
    layers = []
    if base is not None:
        base_path = path.parent / base
        if not base_path.exists():
            base_path = resolve_config_path(base)
        layers = read_yaml(base_path, _seen + (path,))
    return layers + [(data, str(path))]


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a","b","c"], value parsed as a YAML scalar/flow value)."""
    if "=" not in text:
        raise ConfigError(f"command line: override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"command line: override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _nest(keys: list[str], value: Any) -> dict:
    out: Any = value
    for k in reversed(keys):
        out = {k: out}
    return out


def merge(base: dict, update: dict) -> dict:
    """Recursive dict merge; mappings merge, everything else replaces."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check `value` against the annotation `tp`, converting only the safe int -> float."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, source)
            except ConfigError as e:
                errors.append(e)
        raise errors[0] if len(errors) == 1 else ConfigError(
            f"{source}: `{key}` must be {' or '.join(_type_name(a) for a in args)}, got {value!r}"
        )
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: `{key}` is a section; give a mapping, got {value!r}")
        return build(tp, value, source, prefix=key + ".")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: `{key}` must be a mapping, got {value!r}")
        _, vt = typing.get_args(tp) or (Any, Any)
        return {k: _coerce(v, vt, f"{key}.{k}", source) for k, v in value.items()}
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: `{key}` must be a list, got {value!r}")
        (et, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, et, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return origin(items)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads `3e-4` (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise ConfigError(f"{source}: `{key}` must be {_type_name(tp)}, got {value!r}")
    return value


def _unknown_key(source: str, prefix: str, key: Any, names: set[str]) -> ConfigError:
    """The error for a key the section lacks: the closest valid key when one is near (a typo),
    else every key valid there."""
    near = difflib.get_close_matches(str(key), names, n=1)
    hint = f"did you mean `{prefix}{near[0]}`?" if near else f"valid here: {', '.join(sorted(names))}"
    return ConfigError(f"{source}: unknown key `{prefix}{key}`; {hint}")


def build(cls: type, data: dict, source: str, prefix: str = "") -> Any:
    """Instantiate dataclass `cls` from `data`, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        if k not in names:
            raise _unknown_key(source, prefix, k, names)
        kwargs[k] = _coerce(v, hints[k], prefix + k, source)
    return cls(**kwargs)


def _apply(config: Any, data: dict, source: str, prefix: str = "") -> Any:
    """Layer `data` onto an existing dataclass instance (sections merge field by field)."""
    hints = typing.get_type_hints(type(config))
    names = {f.name for f in dataclasses.fields(config)}
    changes = {}
    for k, v in data.items():
        if k not in names:
            raise _unknown_key(source, prefix, k, names)
        current = getattr(config, k)
        if dataclasses.is_dataclass(current) and isinstance(v, dict):
            changes[k] = _apply(current, v, source, prefix + k + ".")
        elif isinstance(current, dict) and isinstance(v, dict):
            changes[k] = _coerce(merge(current, v), hints[k], prefix + k, source)
        else:
            changes[k] = _coerce(v, hints[k], prefix + k, source)
    return dataclasses.replace(config, **changes)


def load_config(
    paths: str | Path | Sequence[str | Path] | None = None, overrides: Sequence[str] = ()
) -> Config:
    """Defaults, then each file (its `base:` chain first) in order, then command-line overrides."""
    config = Config()
    if isinstance(paths, (str, Path)):
        paths = [paths]
    for path in paths or ():
        for data, source in read_yaml(resolve_config_path(path)):
            config = _apply(config, data, f"config file {source}")
    for text in overrides:
        keys, value = parse_override(text)
        config = _apply(config, _nest(keys, value), "command line")
    validate(config)
    return config


def validate(config: Config) -> None:
    """Cross-field checks that types alone cannot express."""
    choices = {
        "model.dtype": (config.model.dtype, ("float32", "bfloat16")),
        "model.param_dtype": (config.model.param_dtype, ("float32", "bfloat16")),
        "model.remat": (config.model.remat, ("none", "full", "save_dots")),
        "rl.preset": (config.rl.preset, ("exectune", "advisor")),
        "api.follow_check": (config.api.follow_check, ("judge", "trace")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"config: `{key}` is {value!r}; choose one of {', '.join(allowed)}")
    for name in ("core", "teacher", "judge", "core_strong"):
        ep = getattr(config.api, name)
        if ep is not None and ep.provider not in ("openai", "anthropic"):
            raise ConfigError(
                f"config: `api.{name}.provider` is {ep.provider!r}; choose openai or anthropic"
            )
    if config.mesh.platform not in (None, "gpu", "tpu"):
        raise ConfigError(f"config: `mesh.platform` is {config.mesh.platform!r}; choose gpu, tpu "
                          "or null (any device)")
    if config.api.follow_check == "judge" and config.api.judge is None:
        raise ConfigError("config: `api.follow_check` is judge but `api.judge` is not set; set "
                          "api.judge to a judge model or api.follow_check=trace")
    try:
        world_from(config.sim.world, prefix="sim.world.")
    except ValueError as e:
        raise ConfigError(f"config: {e}") from None
    lora = config.model.lora
    unknown = [t for t in lora.target_modules if t not in LORA_TARGETS]
    if unknown or not lora.target_modules:
        raise ConfigError(f"config: `model.lora.target_modules` must name modules from "
                          f"{', '.join(LORA_TARGETS)} (got {lora.target_modules})")
    for prefix, section in sections(config):
        for name, interval in type(section).RANGES.items() if hasattr(section, "RANGES") else ():
            value = getattr(section, name)
            if value is not None and not in_range(value, interval):
                raise ConfigError(
                    f"config: `{prefix}{name}` is {value!r}; it must be in {interval}")


# ---------------------------------------------------------------------------------------------
# Valid ranges: each section declares `RANGES = {field: "[lo, hi)"}` for its numeric fields

_INTERVAL = re.compile(r"^([\[(])\s*(\S+?)\s*,\s*(\S+?)\s*([\])])$")


@functools.cache
def parse_interval(text: str) -> tuple[float, float, bool, bool]:
    """"[1, inf)" -> (1.0, inf, True, False): bounds and whether each is included."""
    m = _INTERVAL.match(text)
    if m is None:
        raise ValueError(f"range {text!r} is not an interval like [0, 1) or (0, inf)")
    lo, hi = float(m.group(2)), float(m.group(3))
    return lo, hi, m.group(1) == "[", m.group(4) == "]"


def in_range(value: float, interval: str) -> bool:
    lo, hi, lo_in, hi_in = parse_interval(interval)
    above = value >= lo if lo_in else value > lo
    below = value <= hi if hi_in else value < hi
    return above and below and not math.isnan(value)


def sections(config: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted prefix, section) for `config` and every nested section that is set."""
    yield prefix, config
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            yield from sections(value, f"{prefix}{f.name}.")


def _scalar(tp: Any) -> Any:
    """int for `int | None`, and so on; the annotation itself when it is not optional."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return tp


def section_types(cls: type = None) -> Iterator[type]:  # type: ignore[assignment]
    """Every section class reachable from `cls` (default: Config), each once."""
    seen: list[type] = []

    def walk(c: type) -> None:
        if c in seen:
            return
        seen.append(c)
        for tp in typing.get_type_hints(c).values():
            inner = _scalar(tp)
            if dataclasses.is_dataclass(inner):
                walk(inner)

    walk(cls or Config)
    return iter(seen)


def numeric_fields(cls: type) -> list[str]:
    """Fields of section `cls` that hold a number (int or float, optional or not)."""
    hints = typing.get_type_hints(cls)
    return [f.name for f in dataclasses.fields(cls) if _scalar(hints[f.name]) in (int, float)]


# ---------------------------------------------------------------------------------------------
# Field documentation: the comments beside (and just above) each field where it is declared


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> its doc: the full-line comments right above the field, then the comment
    trailing its line. Read from the class source, so the docs live where the field does."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments: dict[int, tuple[str, bool]] = {}  # line -> (text, whole line)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            whole_line = tok.line.lstrip().startswith("#")
            comments[tok.start[0]] = (tok.string.lstrip("#").strip(), whole_line)
    docs = {}
    names = {f.name for f in dataclasses.fields(cls)}
    for node in ast.parse(source).body[0].body:
        if not isinstance(node, ast.AnnAssign) or getattr(node.target, "id", None) not in names:
            continue
        above, line = [], node.lineno - 1
        while line in comments and comments[line][1]:
            above.insert(0, comments[line][0])
            line -= 1
        trailing = [comments[n][0] for n in range(node.lineno, node.end_lineno + 1)
                    if n in comments and not comments[n][1]]
        docs[node.target.id] = " ".join(above + trailing)
    return docs


def section_doc(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    return "" if doc.startswith(f"{cls.__name__}(") else doc.split("\n\n")[0].replace("\n", " ")


def _flow(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 20, sort_keys=False).strip()
    return text.removesuffix("...").strip()


def render(config: Any, indent: int = 0, width: int = 100) -> str:
    """The config as YAML (loadable again with `--config`) with each field's doc as a comment."""
    lines = []
    pad = "  " * indent
    docs = field_docs(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        nested = dataclasses.is_dataclass(value)
        doc = docs.get(f.name) or (section_doc(type(value)) if nested else "")
        head = f"{pad}{f.name}:" + ("" if nested else f" {_flow(value)}")
        if doc and len(head) + len(doc) + 4 <= width:
            lines.append(f"{head}  # {doc}")
        else:
            lines += textwrap.wrap(doc, width, initial_indent=f"{pad}# ", subsequent_indent=f"{pad}# ")
            lines.append(head)
        if nested:
            lines.append(render(value, indent + 1, width))
    return "\n".join(lines)


def section_help(cls: type, prefix: str) -> str:
    """`--help` text for one section: each field with its default and doc."""
    default = cls()
    docs = field_docs(cls)
    title = f"config section `{prefix.rstrip('.')}`" if prefix else "top-level config fields"
    lines = [title + (f": {section_doc(cls)}" if prefix and section_doc(cls) else "")]
    for f in dataclasses.fields(cls):
        value = getattr(default, f.name)
        shown = type(value).__name__ + " section" if dataclasses.is_dataclass(value) else _flow(value)
        lines.append(f"  {prefix}{f.name}={shown}")
        if docs.get(f.name):
            lines += textwrap.wrap(docs[f.name], 92, initial_indent="      ",
                                   subsequent_indent="      ")
    return "\n".join(lines)


def flat(config: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted field -> value over every section (mappings and lists stay whole values)."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out.update(flat(value, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = value
    return out


def to_dict(config: Any) -> dict:
    """Plain data for logging and for writing the resolved config next to a run."""
    return dataclasses.asdict(config)


def dump(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
