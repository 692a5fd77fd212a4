"""Stage 2: supervised fine-tuning of the guide on accepted (problem, strategy) pairs.

    exectune sft --config configs/demo.yaml run_dir=DIR sft.steps=N

Reads run_dir/<sample.out>/accepted.jsonl (or `sft.data`), starts from `sft.init`, else
`model.path`, else the demo base guide, and trains `sft.steps` optimizer steps with the loss on
strategy tokens only. Writes run_dir/<sft.name>/: metrics.jsonl, checkpoints/ (params, optimizer,
data-iterator position) and, at the end, guide/ (HF directory with tokenizer), the hand-off to RL.
With `model.lora.rank > 0` only LoRA adapters train (models/lora.py): checkpoints hold them and
the base's path, and guide/ holds the merged weights.
Running the same command again resumes from the newest checkpoint; a finished stage is a no-op.

The train step is one jitted pure function over the split nnx state of (model, optimizer):
its inputs and outputs keep the parameters' logical shardings, so the same code runs on one
CPU, on 8 simulated devices or on a pod slice, and the buffers are donated step to step.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from exectune_jax import layout, parallel, preflight, resume
from exectune_jax.config import Config, to_dict
from exectune_jax.data import pipeline, tasks
from exectune_jax.errors import UserError
from exectune_jax.gcop import prompts, strategy
from exectune_jax.io import remove_path, swap_in_dir, temp_sibling
from exectune_jax.models import hf, lora, sampler
from exectune_jax.train import head
from exectune_jax.train.checkpoint import Checkpointer
from exectune_jax.train.metrics import MetricsWriter, progress_bar
from exectune_jax.train.optim import lr_schedule, make_optimizer

log = logging.getLogger(__name__)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


# ---------------------------------------------------------------------------------------------
# Loss and steps (pure)


def _forward_losses(model, batch, head_chunk, dropout_key=None):
    """(sum of masked next-token cross-entropies, number of masked tokens), in float32.

    The head runs over chunks of `head_chunk` positions (train/head.py), so the full
    [batch, length, vocab] logits never exist at once. `dropout_key`: the LoRA adapters'
    dropout randomness (None: none).
    """
    x, _ = model.hidden(batch["tokens"], batch["positions"], segment_ids=batch["segment_ids"],
                        dropout_key=dropout_key)
    logp, _ = head.chunked_head(x, model.head(), batch["targets"], head_chunk)
    mask = batch["loss_mask"].astype(jnp.float32)
    return -jnp.sum(logp * mask), jnp.sum(mask)


def make_train_step(graphdef: nnx.GraphDef, shardings: Any = None, wrt: Any = nnx.Param, *,
                    head_chunk: int = 0, dropout_seed: int | None = None):
    """jit(state, batch) -> (state, stats) for the split state of (model, optimizer).

    The loss is the mean over the batch's masked tokens, differentiated with respect to the
    `wrt` parameters (the optimizer's; LoRA adapters only with lora). With `shardings` (the
    state's NamedShardings) the new state is pinned to the same layout as the old one. With
    `dropout_seed`, the LoRA adapters' dropout draws from a key of the seed and the optimizer's
    step count, so a resumed run draws what the uninterrupted one would have.
    """

    def step(state, batch):
        model, opt = nnx.merge(graphdef, state)
        key = (None if dropout_seed is None
               else jax.random.fold_in(jax.random.key(dropout_seed), opt.step[...]))

        def loss_fn(m):
            total, count = _forward_losses(m, batch, head_chunk, key)
            return total / jnp.maximum(count, 1.0), count

        (loss, count), grads = nnx.value_and_grad(
            loss_fn, argnums=nnx.DiffState(0, wrt), has_aux=True)(model)
        opt.update(model, grads)
        stats = {"loss": loss, "grad_norm": optax.tree.norm(grads), "loss_tokens": count}
        return nnx.split((model, opt))[1], stats

    if shardings is None:
        return jax.jit(step, donate_argnums=0)
    replicated = NamedSharding(_mesh_of(shardings), PartitionSpec())
    return jax.jit(step, donate_argnums=0, out_shardings=(shardings, replicated))


def make_eval_step(graphdef: nnx.GraphDef, *, head_chunk: int = 0):
    """jit(state, batch) -> (loss sum, token count) without touching the state."""

    def step(state, batch):
        model, _ = nnx.merge(graphdef, state)
        return _forward_losses(model, batch, head_chunk)

    return jax.jit(step)


def _mesh_of(shardings: Any):
    return jax.tree.leaves(shardings)[0].mesh


# ---------------------------------------------------------------------------------------------
# Resolving inputs


def stage_dir(cfg: Config) -> Path:
    return layout.stage(cfg.run_dir, cfg.sft.name)


def base_guide_dir(cfg: Config) -> Path:
    return layout.base_guide(cfg.run_dir)


def starts_from_base_guide(cfg: Config) -> bool:
    """Whether the config names no starting guide, so SFT starts from the demo base guide."""
    return not (cfg.sft.init or cfg.model.path)


def init_guide(cfg: Config) -> Path:
    """sft.init, else model.path, else the demo base guide (which `exectune sft` builds first)."""
    if cfg.sft.init:
        return Path(cfg.sft.init)
    if cfg.model.path:
        return Path(cfg.model.path)
    path = base_guide_dir(cfg)
    if not (path / hf.CONFIG_FILE).exists():
        raise UserError(f"{path}: no starting guide there; set sft.init or model.path, or start "
                        f"the stage with `exectune sft`, which builds the demo base guide first")
    return path


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


# ---------------------------------------------------------------------------------------------
# Evaluation


def eval_loss(eval_step, state, batches, mesh) -> float | None:
    if not batches:
        return None
    total = count = 0.0
    for b in batches:
        s, n = jax.device_get(eval_step(state, parallel.global_batch(b, mesh)))
        total, count = total + float(s), count + float(n)
    return total / max(count, 1.0)


def strategy_validity(model, tokenizer, problems, family: str, max_new_tokens: int) -> dict:
    """Greedy strategies for `problems`: the fraction that parse, and one example text."""
    if not problems:
        return {}
    ids = [pipeline.encode_prompt(tokenizer, prompts.guide_messages(p, family)) for p in problems]
    out = sampler.generate(model, ids, max_new_tokens=max_new_tokens, temperature=0.0,
                           tokenizer=tokenizer)
    ok = [strategy.parse(t).ok for t in out.texts]
    return {"strategy_valid": float(np.mean(ok)), "sample": out.texts[0][:400]}


# ---------------------------------------------------------------------------------------------
# The stage


def run(cfg: Config, **_: Any) -> int:
    preflight.check(cfg, "sft")
    sc = cfg.sft
    out_dir = stage_dir(cfg)
    ckpt = Checkpointer(layout.checkpoints(cfg.run_dir, sc.name), keep=sc.keep_checkpoints)
    resume.begin(cfg, out_dir, "sft", ckpt, write=jax.process_index() == 0,
                 inputs={"sft.data": layout.sft_data(cfg)})
    if ckpt.latest_step() == sc.steps and (layout.guide(cfg.run_dir, sc.name) / hf.CONFIG_FILE).exists():
        ckpt.close()
        print(f"sft {sc.name}: already at step {sc.steps}; guide at {layout.guide(cfg.run_dir, sc.name)}")
        return 0
    init = init_guide(cfg)
    tokenizer = load_tokenizer(init)
    pi, pc = jax.process_index(), jax.process_count()
    data = pipeline.load_sft_examples(layout.sft_data(cfg), tokenizer, sc.seq_len,
                                      held_out=sc.held_out, seed=cfg.seed)
    mesh = parallel.make_mesh(cfg.mesh)
    model, mcfg = hf.load(init, mesh=mesh, dtype=DTYPES[cfg.model.param_dtype],
                          compute_dtype=DTYPES[cfg.model.dtype], remat=cfg.model.remat)
    lora.apply(model, cfg.model.lora, seed=cfg.seed, mesh=mesh)
    wrt = lora.trainable(cfg.model.lora)
    tx = make_optimizer(sc.lr, sc.steps, sc.warmup_steps, sc.weight_decay, sc.clip_norm,
                        grad_accum=sc.grad_accum)
    with parallel.use_mesh(mesh):
        opt = parallel.shard_model(nnx.Optimizer(model, tx, wrt=wrt), mesh)
    it = pipeline.sft_iterator(data.train, seq_len=sc.seq_len, batch_size=sc.batch_size,
                               seed=cfg.seed, process_index=pi, process_count=pc)
    writer = MetricsWriter(out_dir, tensorboard=cfg.metrics.tensorboard, enabled=pi == 0,
                           wandb=cfg.metrics.wandb, config=to_dict(cfg), name=sc.name)
    start = _resume(ckpt, model, opt, wrt, it, mesh, writer, sc.name)
    if start == 0:
        writer.log(0, train_examples=len(data.train), held_out_examples=len(data.held_out),
                   dropped_rows=data.dropped)
    graphdef, state = nnx.split((model, opt))
    shardings = jax.tree.map(lambda x: x.sharding, state)
    chunk = cfg.model.head_chunk
    dropout = lora.enabled(cfg.model.lora) and cfg.model.lora.dropout > 0
    train_step = make_train_step(graphdef, shardings, wrt, head_chunk=chunk,
                                 dropout_seed=cfg.seed if dropout else None)
    eval_step = make_eval_step(graphdef, head_chunk=chunk)
    evals = pipeline.eval_batches(data.held_out, seq_len=sc.seq_len, batch_size=sc.batch_size,
                                  process_index=pi, process_count=pc)
    task = tasks.for_run(cfg.task.name, cfg.task.options, cfg.run_dir)
    valid_problems = task.problems("validation")[: sc.eval_problems]
    schedule = lr_schedule(sc.lr, sc.steps, sc.warmup_steps)

    def evaluate(step: int) -> dict:
        nnx.update((model, opt), state)
        with parallel.use_mesh(mesh):
            scores = {"eval_loss": eval_loss(eval_step, state, evals, mesh)}
            scores.update(strategy_validity(model, tokenizer, valid_problems, task.family,
                                            sc.eval_max_new_tokens))
        writer.log(step, **{k: v for k, v in scores.items() if k != "sample" and v is not None})
        return scores

    def checkpoint(step: int) -> None:
        nnx.update((model, opt), state)
        ckpt.save(step, state=_ckpt_state(model, opt, wrt), data_iter=it,
                  meta={"step": step, **lora.checkpoint_meta(cfg.model.lora, init)})

    bar = progress_bar(sc.steps, initial=start, desc=f"sft {sc.name}",
                       enabled=cfg.metrics.progress and pi == 0)
    last = time.perf_counter()
    try:
        with parallel.use_mesh(mesh):
            for step in range(start + 1, sc.steps + 1):
                stats, tokens = [], 0
                for _ in range(sc.grad_accum):
                    batch = next(it)
                    tokens += int(np.count_nonzero(batch["segment_ids"])) * pc
                    state, s = train_step(state, parallel.global_batch(batch, mesh))
                    stats.append(s)
                stats = jax.device_get(stats)
                now = time.perf_counter()
                loss = float(np.mean([s["loss"] for s in stats]))
                writer.log(step, loss=loss, lr=float(schedule(step - 1)),
                           grad_norm=float(np.mean([s["grad_norm"] for s in stats])),
                           tokens_per_s=tokens / (now - last), tokens=tokens)
                last = now
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
                if sc.eval_every and step % sc.eval_every == 0 and step < sc.steps:
                    evaluate(step)
                    last = time.perf_counter()
                if sc.checkpoint_every and step % sc.checkpoint_every == 0 and step < sc.steps:
                    checkpoint(step)
    except KeyboardInterrupt:
        ckpt.close()  # let an in-flight save finish: the next run resumes from it
        raise
    finally:
        bar.close()
    final = evaluate(sc.steps) if sc.eval_every and sc.steps > start else {}
    if sc.steps > start:
        checkpoint(sc.steps)
    ckpt.close()
    writer.close()
    nnx.update((model, opt), state)
    guide = _write_guide(model, mcfg, tokenizer, layout.guide(cfg.run_dir, sc.name))
    if pi == 0:
        scores = "".join(f", {k} {v:.4g}" for k, v in final.items() if isinstance(v, float))
        print(f"sft {sc.name}: step {sc.steps}{scores}; guide at {guide}")
    return 0


def _ckpt_state(model, opt, wrt) -> dict:
    """The trained parameters (with LoRA: the adapters; the base is reloaded) and optimizer."""
    return {"params": nnx.state(model, wrt), "opt": nnx.state(opt)}


def _resume(ckpt: Checkpointer, model, opt, wrt, it, mesh, writer: MetricsWriter, name: str) -> int:
    """Restore the newest readable checkpoint (a damaged newest one is passed over, with one line)
    into model, optimizer and data iterator; returns its step."""
    if ckpt.latest_step() is None:
        return 0
    state, meta = ckpt.restore(target=_ckpt_state(model, opt, wrt), data_iter=it, mesh=mesh)
    nnx.update(model, state["params"])
    nnx.update(opt, state["opt"])
    step = int(meta.get("step", ckpt.restored_step))
    writer.truncate_after(step)
    resume.resumed(name, step)
    return step


def _write_guide(model, mcfg, tokenizer, path: Path) -> Path:
    """HF directory written beside and renamed over `path`, so a reader never sees half of it."""
    tmp = temp_sibling(path)
    if jax.process_index() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    hf.save(lora.merged(model), mcfg, tmp, tokenizer=tokenizer)
    if jax.process_index() == 0 and (old := swap_in_dir(tmp, path)) is not None:
        remove_path(old)
    return path
