"""A fresh guide's language-model warm-up, and the size and recipe of the demo's base guide.

Real runs start from an off-the-shelf instruct model; the offline demo builds a tiny one
(`sim/guide.py`) and warms it up here with SFT's own train step, loss on every token. The
training library never builds that guide itself: `exectune sft` builds it before the stage
when the config names no starting guide, and the demo builds it as a stage of its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from flax import nnx

from exectune_jax.config import Config, ConfigError
from exectune_jax.data.pipeline import Example, sft_iterator
from exectune_jax.models.transformer import Transformer
from exectune_jax.train.optim import make_optimizer
from exectune_jax.train.sft import make_train_step

@dataclass(frozen=True)
class BaseGuideSpec:
    """Size and warm-up of the demo guide, sized for seconds of CPU time per stage."""

    vocab_size: int = 1024  # BPE target; the model's vocabulary is the tokenizer's actual size
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    max_position_embeddings: int = 1024
    warmup_steps: int = 100  # LM warm-up optimizer steps on prompts + free-form advice
    warmup_batch_size: int = 8  # packed rows per step
    warmup_seq_len: int = 256
    warmup_lr: float = 3e-3


def spec_from_config(cfg: Config) -> BaseGuideSpec:
    """`sft.base_guide` overrides on top of the defaults; unknown keys name the field."""
    fields = {f.name: f for f in dataclasses.fields(BaseGuideSpec)}
    values = {}
    for key, value in cfg.sft.base_guide.items():
        if key not in fields:
            raise ConfigError(
                f"config: unknown key `sft.base_guide.{key}` (valid: {', '.join(sorted(fields))})"
            )
        kind = type(fields[key].default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not kind:
            raise ConfigError(
                f"config: `sft.base_guide.{key}` must be {kind.__name__}, got {value!r}"
            )
        values[key] = value
    return BaseGuideSpec(**values)


def warm_up(model: Transformer, examples: Sequence[Example], spec: BaseGuideSpec, seed: int):
    """`spec.warmup_steps` plain (single-device) LM steps; returns the per-step losses."""
    tx = make_optimizer(spec.warmup_lr, spec.warmup_steps, warmup=max(1, spec.warmup_steps // 10),
                        weight_decay=0.01, clip_norm=1.0)
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    graphdef, state = nnx.split((model, opt))
    step = make_train_step(graphdef)
    it = sft_iterator(examples, seq_len=spec.warmup_seq_len, batch_size=spec.warmup_batch_size,
                      seed=seed, process_index=0, process_count=1)
    losses = []
    for _ in range(spec.warmup_steps):
        state, stats = step(state, next(it))
        losses.append(float(stats["loss"]))
    nnx.update((model, opt), state)
    return losses
