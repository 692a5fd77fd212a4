"""YAML files with `base:` overlays and dotted `key=value` overrides into a validated Config:
unknown keys (with the closest valid one), wrong types and out-of-range values are one
`ConfigError` naming the key and where it came from."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import types
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from exectune_jax.config.schema import (
    LORA_TARGETS,
    PACKAGE_CONFIGS,
    Config,
    ConfigError,
)
from exectune_jax.world import world_from


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


def parse_override(text: str, source: str = "command line") -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a","b","c"], value parsed as a YAML scalar/flow value)."""
    if "=" not in text:
        raise ConfigError(f"{source}: override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"{source}: override {text!r} has an empty key")
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
    return apply_overrides(config, overrides)


def given(paths: str | Path | Sequence[str | Path] | None, overrides: Sequence[str], key: str) -> bool:
    """Whether a config file (its `base:` chain included) or an override names dotted `key`,
    whatever its value: a value equal to the default was still asked for."""
    keys = key.split(".")

    def names(data: Any, rest: list[str]) -> bool:
        return not rest or isinstance(data, dict) and rest[0] in data and names(data[rest[0]], rest[1:])

    if isinstance(paths, (str, Path)):
        paths = [paths]
    layers = [data for path in paths or () for data, _ in read_yaml(resolve_config_path(path))]
    layers += [_nest(*parse_override(text)) for text in overrides]
    return any(names(data, keys) for data in layers)


def apply_overrides(config: Config, overrides: Sequence[str],
                    source: str = "command line") -> Config:
    """`config` with dotted `key=value` overrides layered on as the command line layers them
    (mappings merge), then validated; errors name `source`."""
    for text in overrides:
        keys, value = parse_override(text, source)
        config = _apply(config, _nest(keys, value), source)
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
    for name in ("core", "teacher", "judge", "core_strong", "core_next"):
        ep = getattr(config.api, name)
        if ep is not None and ep.provider not in ("openai", "anthropic"):
            raise ConfigError(
                f"config: `api.{name}.provider` is {ep.provider!r}; choose openai or anthropic"
            )
    check_cores(config)
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
                what = "each of its values" if isinstance(value, list) else "it"
                raise ConfigError(
                    f"config: `{prefix}{name}` is {value!r}; {what} must be in {interval}")


def check_cores(config: Config) -> None:
    """`eval.cores`: one or more distinct core endpoints, each set."""
    cores = config.eval.cores
    known = ("core", "core_next", "core_strong")
    if not cores or len(set(cores)) != len(cores) or not set(cores) <= set(known):
        raise ConfigError(f"config: `eval.cores` is {cores!r}; list one or more of {', '.join(known)}, "
                          "each once")
    unset = [c for c in cores if getattr(config.api, c) is None]
    if unset:
        raise ConfigError(f"config: `eval.cores` names {', '.join(unset)} but `api.{unset[0]}` is not "
                          f"set; set it to an endpoint or leave it out of eval.cores")


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


def in_range(value: float | list[float], interval: str) -> bool:
    """Whether `value` lies in `interval`; a list does when each of its elements does."""
    if isinstance(value, list):
        return all(in_range(v, interval) for v in value)
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
    """Fields of section `cls` that hold a number or a list of numbers (optional or not)."""
    hints = typing.get_type_hints(cls)
    numbers = (int, float, list[int], list[float])
    return [f.name for f in dataclasses.fields(cls) if _scalar(hints[f.name]) in numbers]
