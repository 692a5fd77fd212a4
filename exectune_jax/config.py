"""Typed configuration: dataclass sections, YAML files, dotted `key=value` overrides.

Every `exectune` command takes `--config FILE` plus overrides such as `sft.steps=20`. A file may
name a `base:` file it extends (relative to itself), so per-model, per-task and per-topology
overlays stay small. Validation happens once, here: an unknown key or a value of the wrong type
is a `ConfigError` naming the key and the file (or `command line`) it came from. The defaults of
every section are the embedded offline default, so `Config()` alone runs the demo world.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from exectune_jax.errors import UserError

PACKAGE_CONFIGS = Path(__file__).parent / "configs"
SIM_URL = "sim"  # an endpoint whose base_url is "sim" talks to the embedded loopback server


class ConfigError(UserError):
    """A user-fixable problem in a config file or override."""


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoraConfig:
    """Low-rank adapters (models/lora.py): with rank > 0 only the adapters train and checkpoint."""

    rank: int = 0  # r of every adapter; 0 = full fine-tuning (no adapters)
    alpha: float = 16.0  # adapter output scaled by alpha / rank (PEFT's lora_alpha)
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))  # HF/PEFT names


@dataclass
class ModelConfig:
    """The guide model."""

    path: str | None = None  # HF checkpoint dir; None = the embedded demo guide, built on first use
    dtype: str = "float32"  # compute dtype: float32 | bfloat16
    param_dtype: str = "float32"
    max_seq_len: int = 256  # prompt + strategy tokens the guide ever sees
    remat: str = "full"  # what training recomputes per block: none | full | save_dots
    lora: LoraConfig = field(default_factory=LoraConfig)  # adapters for SFT and RL; rank 0 = off


@dataclass
class MeshConfig:
    """Device mesh; -1 fills the remaining devices."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1


@dataclass
class TaskConfig:
    name: str = "arith"
    options: dict[str, Any] = field(default_factory=dict)  # keyword options of tasks.get(name, ...)


@dataclass
class EndpointConfig:
    """One black-box model. The key is read from the environment variable `api_key_env`."""

    provider: str = "openai"  # openai (any OpenAI-compatible server) | anthropic
    base_url: str = SIM_URL
    model: str = "sim-core"
    api_key_env: str | None = None
    max_tokens: int = 512
    temperature: float = 0.0
    timeout_s: float = 60.0


@dataclass
class ApiConfig:
    """Everything that talks to paid black-box models goes through one pool with these limits."""

    core: EndpointConfig = field(default_factory=EndpointConfig)
    teacher: EndpointConfig = field(
        default_factory=lambda: EndpointConfig(model="sim-teacher", temperature=1.0)
    )
    judge: EndpointConfig | None = None
    core_strong: EndpointConfig | None = field(
        default_factory=lambda: EndpointConfig(model="sim-core-strong")
    )
    concurrency: int = 32
    rpm: float | None = None  # requests per minute; None = unlimited
    tpm: float | None = None  # tokens per minute; None = unlimited
    max_retries: int = 8
    backoff_base_s: float = 0.05
    backoff_max_s: float = 10.0
    circuit_breaker_failures: int = 50  # consecutive failures that open the breaker
    circuit_breaker_cooldown_s: float = 5.0
    budget_usd: float | None = None  # stop starting new calls past this spend
    prices: str | None = None  # price table YAML; None = the packaged configs/prices.yaml


@dataclass
class SimConfig:
    """The embedded loopback server standing in for the core and teacher APIs."""

    host: str = "127.0.0.1"
    port: int = 0  # 0 = a free port
    latency_ms: float = 0.0
    rpm: float | None = None  # answer 429 with Retry-After above this rate
    fault_rate: float = 0.0  # fraction of requests answered with an injected fault
    seed: int = 0


@dataclass
class SampleConfig:
    """Stage 1: teacher-guided acceptance sampling."""

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


@dataclass
class SftConfig:
    """Stage 2: supervised fine-tuning on (problem, strategy) pairs."""

    name: str = "sft"  # stage directory under run_dir (the demo also trains "sft_unfiltered")
    data: str | None = None  # accepted.jsonl; None = run_dir/<sample.out>/accepted.jsonl
    init: str | None = None  # HF guide to start from; None = model.path (or the demo base guide)
    steps: int = 200  # optimizer steps
    batch_size: int = 8  # packed rows of seq_len tokens per micro-batch (global, all processes)
    seq_len: int = 256
    lr: float = 3e-3  # peak; tuned for the demo guide (use ~1e-5 for a 1-2B model)
    warmup_steps: int = 10
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    grad_accum: int = 1  # micro-batches averaged per optimizer step
    eval_every: int = 100  # eval loss + strategy validity every N steps (and at the end); 0 = never
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    held_out: float = 0.05  # fraction of accepted problems kept out of training for the eval loss
    eval_problems: int = 16  # validation problems the guide greedily writes strategies for
    eval_max_new_tokens: int = 160  # strategy token budget when checking validity
    # demo guide size and warm-up: overrides of sim/guide.py BaseGuideSpec (used when building it)
    base_guide: dict[str, Any] = field(default_factory=dict)


@dataclass
class RlConfig:
    """Stage 3: structure-aware GRPO (symbols as in the paper: G, beta, epsilon, mu)."""

    name: str = "rl"  # stage directory under run_dir (the demo also trains "advisor_rl")
    steps: int = 40
    group_size: int = 8  # G
    prompts_per_step: int = 8
    beta: float = 0.04  # KL weight to the frozen reference
    clip_eps: float = 0.2  # epsilon of the clipped ratio objective
    mu: int = 1  # policy updates per batch
    lr: float = 1e-4  # the demo guide's (3e-4 undid its SFT accuracy); a 1.7B guide wants ~1e-6
    max_new_tokens: int = 96
    temperature: float = 1.0
    top_p: float = 1.0
    staleness: int = 1  # batches the sampler may run ahead of labelling; 0 = synchronous
    preset: str = "exectune"  # exectune | advisor
    weights: dict[str, float] = field(default_factory=dict)  # overrides of the preset's weights
    core_only_samples: int = 4  # samples per problem to estimate core-alone success
    init: str | None = None  # HF guide to start from (and the KL reference); None = run_dir/sft/guide
    checkpoint_every: int = 10
    keep_checkpoints: int = 2
    micro_batch: int = 16  # sequences per forward/backward pass (bounds activations); 0 = all
    warmup_steps: int = 0
    weight_decay: float = 0.0
    clip_norm: float = 1.0
    judge_max_tokens: int = 8  # the optional LLM judge replies with one number
    held_out: int = 64  # validation problems for the before/after accuracy report; 0 = none


@dataclass
class EvalConfig:
    split: str = "test"
    n_problems: int | None = None
    samples: int = 1  # core executions per (problem, strategy)
    max_new_tokens: int = 96
    # method -> guide HF dir (relative to run_dir unless absolute); a missing dir skips the row
    guides: dict[str, str] = field(default_factory=lambda: {
        "base_guide": "base_guide", "sft_unfiltered": "sft_unfiltered/guide",
        "exectune_sft": "sft/guide", "advisor_rl": "advisor_rl/guide", "exectune": "rl/guide"})
    advisor_methods: list[str] = field(default_factory=lambda: ["advisor_rl"])  # free-form prompts
    core_strong: bool = True  # add the bigger core alone (when api.core_strong is set)
    batch_size: int = 64  # guide prompts generated together
    out: str = "eval"  # stage directory under run_dir: results.json, results.md, plots


@dataclass
class MetricsConfig:
    tensorboard: bool = False
    progress: bool = True


@dataclass
class Config:
    run_dir: str = "runs/demo"
    seed: int = 0
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


def build(cls: type, data: dict, source: str, prefix: str = "") -> Any:
    """Instantiate dataclass `cls` from `data`, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        if k not in names:
            near = ", ".join(sorted(names))
            raise ConfigError(f"{source}: unknown key `{prefix}{k}` (valid here: {near})")
        kwargs[k] = _coerce(v, hints[k], prefix + k, source)
    return cls(**kwargs)


def _apply(config: Any, data: dict, source: str, prefix: str = "") -> Any:
    """Layer `data` onto an existing dataclass instance (sections merge field by field)."""
    hints = typing.get_type_hints(type(config))
    names = {f.name for f in dataclasses.fields(config)}
    changes = {}
    for k, v in data.items():
        if k not in names:
            raise ConfigError(
                f"{source}: unknown key `{prefix}{k}` (valid here: {', '.join(sorted(names))})"
            )
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
    lora = config.model.lora
    unknown = [t for t in lora.target_modules if t not in LORA_TARGETS]
    if lora.rank < 0 or lora.alpha <= 0 or unknown or not lora.target_modules:
        raise ConfigError(
            f"config: `model.lora` needs rank >= 0, alpha > 0 and target_modules from "
            f"{', '.join(LORA_TARGETS)} (got rank={lora.rank}, alpha={lora.alpha}, "
            f"target_modules={lora.target_modules})"
        )
    if not 0.0 <= config.sim.fault_rate < 1.0:
        raise ConfigError("config: `sim.fault_rate` must be in [0, 1)")


def to_dict(config: Any) -> dict:
    """Plain data for logging and for writing the resolved config next to a run."""
    return dataclasses.asdict(config)


def dump(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
