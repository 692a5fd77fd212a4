"""Typed configuration: dataclass sections, YAML files, dotted `key=value` overrides.

Every `exectune` command takes `--config FILE` plus overrides such as `sft.steps=20`. A file may
name a `base:` file it extends (relative to itself), so per-model, per-task and per-topology
overlays stay small. Validation happens once, at load: an unknown key or a value of the wrong
type is a `ConfigError` naming the key and the file (or `command line`) it came from. The
defaults of every section are the embedded offline default, so `Config()` alone runs the demo
world.

Three rooms: `schema` (the sections and their fields), `loader` (files and overrides into a
validated Config) and `docs` (each field's doc, the rendered config, its flat forms). This
package's names are the public ones.
"""

from exectune_jax.config.docs import (
    dump,
    field_docs,
    flat,
    render,
    section_doc,
    section_help,
    to_dict,
)
from exectune_jax.config.loader import (
    apply_overrides,
    given,
    in_range,
    load_config,
    numeric_fields,
    parse_interval,
    parse_override,
    section_types,
    sections,
    validate,
)
from exectune_jax.config.schema import (
    LORA_TARGETS,
    PACKAGE_CONFIGS,
    SIM_URL,
    ApiConfig,
    Config,
    ConfigError,
    EndpointConfig,
    EvalConfig,
    ExportConfig,
    LoraConfig,
    MeshConfig,
    MetricsConfig,
    ModelConfig,
    ResumeConfig,
    RlConfig,
    SampleConfig,
    SftConfig,
    SimConfig,
    TaskConfig,
)

__all__ = [
    "LORA_TARGETS", "PACKAGE_CONFIGS", "SIM_URL", "ApiConfig", "Config", "ConfigError",
    "EndpointConfig", "EvalConfig", "ExportConfig", "LoraConfig", "MeshConfig", "MetricsConfig",
    "ModelConfig", "ResumeConfig", "RlConfig", "SampleConfig", "SftConfig", "SimConfig",
    "TaskConfig", "apply_overrides", "dump", "field_docs", "flat", "given", "in_range", "load_config",
    "numeric_fields", "parse_interval", "parse_override", "render", "section_doc", "section_help",
    "section_types", "sections", "to_dict", "validate",
]
