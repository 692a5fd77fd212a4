"""Stage 3 (`exectune rl`): structure-aware GRPO with the core in the loop.

Each step takes P problems, samples G strategies per problem on device, has the host pool
execute them with the core and score them (train/rewards.py), normalises rewards within each
group (train/advantages.py) and applies mu clipped-ratio updates with a KL penalty to the frozen
reference (train/grpo_loss.py, train/rl_step.py).

Overlap: labelling runs on background threads. Before updating on batch t the loop has already
sampled batches up to t + rl.staleness, so with staleness >= 1 the device samples batch t+1
(from the weights before update t) while the core labels batch t. Stale samples are handled by
the clipped importance ratio against the log-probs recorded when they were sampled.
rl.staleness = 0 is the plain synchronous loop.

Resume: a checkpoint holds policy, optimizer state, reference, RNG, the prompt iterator and the
rollouts already sampled but not yet trained on (their labels are recomputed from the call
cache, so a resumed run repeats no paid call and reproduces the same metrics). A batch whose
calls all failed is reported and skipped: the weights do not move.
"""

from __future__ import annotations

import collections
import json
import logging
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from exectune_jax import layout, parallel, preflight, resume
from exectune_jax.api.pool import open_pool
from exectune_jax.config import Config, to_dict
from exectune_jax.data import tasks
from exectune_jax.data.pipeline import encode_prompt, rl_prompt_iterator
from exectune_jax.errors import UserError
from exectune_jax.models import hf, lora
from exectune_jax.train import dynamic_sampling, forecast, rewards, rl_step
from exectune_jax.train.advantages import advantages, estimator, group_rewards, informative_share
from exectune_jax.train.checkpoint import Checkpointer
from exectune_jax.train.dynamic_sampling import Filled, ReplacementStream
from exectune_jax.train.metrics import MetricsWriter, progress_bar
from exectune_jax.train.optim import make_optimizer
from exectune_jax.train.problem_pool import rl_pool
from exectune_jax.train.rollouts import (
    CALL_KEYS,
    LabelContext,
    Labelled,
    Rollout,
    call_counts,
    guide_prompt,
    held_out,
    label_rollout,
    outcome_metrics,
    sample_rollout,
)

log = logging.getLogger(__name__)

HELD_OUT_FILE = "heldout.json"
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
TIMING_KEYS = ("time", "step_s", "sample_s", "update_s", "pool_wait_s", "device_busy", "label_s")


def prompts_that_fit(problems: list, tokenizer, family: str, spec, cfg: Config) -> list:
    """Problems whose guide prompt leaves room for rl.max_new_tokens in model.max_seq_len.

    Checked once up front (like SFT's over-long rows), so a long prompt is a warning with a
    count, not an error in the middle of a run.
    """
    room = cfg.model.max_seq_len - cfg.rl.max_new_tokens
    kept = [p for p in problems
            if len(encode_prompt(tokenizer, guide_prompt(p, family, spec))) <= room]
    if not kept:
        raise UserError(
            f"no {cfg.task.name} train prompt fits model.max_seq_len={cfg.model.max_seq_len} "
            f"with rl.max_new_tokens={cfg.rl.max_new_tokens}; raise model.max_seq_len"
        )
    if len(kept) < len(problems):
        log.warning("RL skips %d of %d train problems whose prompt exceeds %d tokens (raise "
                    "model.max_seq_len to keep them)", len(problems) - len(kept), len(problems), room)
    return kept


def resolve_init(cfg: Config) -> Path:
    """The guide RL starts from (and keeps as its KL reference)."""
    path = Path(cfg.rl.init) if cfg.rl.init else layout.guide(cfg.run_dir, cfg.sft.name)
    if not (path / "config.json").exists():
        hint = "set rl.init" if cfg.rl.init else "run `exectune sft` first or set rl.init"
        raise UserError(f"RL start guide {path} not found (no config.json); {hint}")
    return path


# ---------------------------------------------------------------------------------------------
# Device state


@dataclass
class Learner:
    """Policy, optimizer state and frozen reference on the mesh, with their compiled programs.

    With LoRA, `reference` is None: the reference is the policy without its adapters (the
    frozen base, i.e. the init guide), computed from the policy's arrays; only the adapters
    train, and `wrt` selects them.
    """

    graphdef: nnx.GraphDef
    params: Any
    opt_state: Any
    reference: Any
    mesh: Any
    layout: rl_step.Layout
    train_step: Any
    logprob_fn: Any
    compute_dtype: Any
    pad_id: int
    wrt: Any = nnx.Param
    lora_meta: dict | None = None  # what a checkpoint of adapters records (base path, spec)

    def sampling_model(self):
        """The policy in the compute dtype (what every layer casts its weights to anyway)."""
        params = self.params
        if any(x.dtype != self.compute_dtype for x in jax.tree.leaves(params)):
            params = rl_step.cast_state(params, self.compute_dtype)
        return nnx.merge(self.graphdef, params)

    def update(self, rollout: Rollout, labelled: Labelled, rl, spread_tol: float) -> dict | None:
        """rl.mu GRPO updates on one labelled rollout, advantages by rl.advantage (rewards closer
        than `spread_tol` are no spread); None (weights untouched) when nothing counts."""
        values, valid = group_rewards(labelled.rewards, rl.group_size)
        if not valid.any():
            return None
        adv = advantages(rl.advantage, values, valid, std_floor=rl.std_floor,
                         spread_tol=spread_tol).reshape(-1)
        host = rl_step.build_batch(rollout.prompts, rollout.completions, rollout.logprobs, adv,
                                   valid.reshape(-1), self.layout, self.pad_id)
        shardings = rl_step.batch_shardings(self.mesh, self.layout)
        batch = {k: jax.device_put(v, shardings[k]) for k, v in host.items()}
        with parallel.use_mesh(self.mesh):
            reference = self.params if self.reference is None else self.reference
            ref_logp = self.logprob_fn(reference, batch)
            for _ in range(rl.mu):
                self.params, self.opt_state, stats = self.train_step(
                    self.params, self.opt_state, batch, ref_logp)
        return {k: float(v) for k, v in jax.device_get(stats).items()}


def build_learner(cfg: Config, init: Path, mesh) -> tuple[Learner, Any]:
    dtype = DTYPES[cfg.model.dtype]
    model, mcfg = hf.load(init, mesh=mesh, dtype=DTYPES[cfg.model.param_dtype], compute_dtype=dtype,
                          remat=cfg.model.remat)
    lora.apply(model, cfg.model.lora, seed=cfg.seed, mesh=mesh)
    adapters, wrt = lora.enabled(cfg.model.lora), lora.trainable(cfg.model.lora)
    graphdef, params = nnx.split(model)
    reference = None if adapters else jax.jit(lambda p: rl_step.cast_state(p, dtype))(params)
    tx = make_optimizer(cfg.rl.lr, cfg.rl.steps * cfg.rl.mu, cfg.rl.warmup_steps,
                        cfg.rl.weight_decay, cfg.rl.clip_norm)
    trained = nnx.filter_state(params, wrt)
    opt_shardings = rl_step.tree_shardings(jax.eval_shape(tx.init, trained), mesh)
    with parallel.use_mesh(mesh):
        opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(trained)
    layout = rl_step.make_layout(cfg.rl.prompts_per_step * cfg.rl.group_size,
                                 cfg.rl.micro_batch, cfg.model.max_seq_len)
    learner = Learner(
        graphdef=graphdef, params=params, opt_state=opt_state, reference=reference, mesh=mesh,
        layout=layout,
        train_step=rl_step.make_train_step(graphdef, tx, clip_eps=cfg.rl.clip_eps,
                                           beta=cfg.rl.beta, wrt=wrt,
                                           head_chunk=cfg.model.head_chunk,
                                           temperature=cfg.rl.temperature, top_p=cfg.rl.top_p),
        logprob_fn=rl_step.make_logprob_fn(graphdef, lora.without_adapters if adapters else None,
                                           head_chunk=cfg.model.head_chunk,
                                           temperature=cfg.rl.temperature, top_p=cfg.rl.top_p),
        compute_dtype=dtype, pad_id=mcfg.pad_token_id if mcfg.pad_token_id is not None else 0,
        wrt=wrt, lora_meta=lora.checkpoint_meta(cfg.model.lora, init),
    )
    return learner, mcfg


# ---------------------------------------------------------------------------------------------
# Checkpoints: device state + rollouts sampled but not yet trained on


def _rollout_arrays(r: Rollout, seq_len: int, max_new: int) -> dict[str, np.ndarray]:
    n = len(r.prompts)
    out = {
        "prompts": np.zeros((n, seq_len), np.int32), "prompt_len": np.zeros(n, np.int32),
        "completions": np.zeros((n, max_new), np.int32), "completion_len": np.zeros(n, np.int32),
        "logprobs": np.zeros((n, max_new), np.float32),
    }
    for i, (p, c, lp) in enumerate(zip(r.prompts, r.completions, r.logprobs, strict=True)):
        out["prompts"][i, : len(p)] = p
        out["prompt_len"][i] = len(p)
        out["completions"][i, : len(c)] = c
        out["completion_len"][i] = len(c)
        out["logprobs"][i, : len(c)] = lp[: len(c)]
    return out


def _rollout_from(arrays: dict, meta: dict, problems_by_id: dict, group_size: int) -> Rollout:
    a = {k: np.asarray(v) for k, v in arrays.items()}
    n = len(a["prompt_len"])
    return Rollout(
        index=meta["index"], policy_step=meta["policy_step"],
        problems=[problems_by_id[i] for i in meta["ids"]], group_size=group_size,
        prompts=[a["prompts"][i, : a["prompt_len"][i]].tolist() for i in range(n)],
        completions=[a["completions"][i, : a["completion_len"][i]].tolist() for i in range(n)],
        logprobs=[a["logprobs"][i, : a["completion_len"][i]] for i in range(n)],
        texts=list(meta["texts"]), sample_s=0.0,
    )


def _flat(tree: Any) -> dict[str, Any]:
    return {f"{i:05d}": leaf for i, leaf in enumerate(jax.tree.leaves(tree))}


def _device_state(learner: Learner) -> dict[str, Any]:
    """What a checkpoint holds of the learner: trained params (with LoRA: the adapters only),
    optimizer and reference; a frozen base is reloaded from the init guide instead."""
    state = {"params": nnx.filter_state(learner.params, learner.wrt),
             "opt_state": _flat(learner.opt_state)}
    if learner.reference is not None:
        state["reference"] = learner.reference
    return state


def save_checkpoint(ckpt: Checkpointer, step: int, learner: Learner, key_data, it,
                    pending: list[Rollout], stream: ReplacementStream, cfg: Config) -> None:
    state = {**_device_state(learner), "rng": {"key": key_data}}
    for k, r in enumerate(pending):
        state[f"pending{k}"] = _rollout_arrays(r, cfg.model.max_seq_len, cfg.rl.max_new_tokens)
    meta = {
        "step": step,
        "pending": [{"index": r.index, "policy_step": r.policy_step,
                     "ids": [p.id for p in r.problems], "texts": r.texts} for r in pending],
        "replacement_position": stream.position,
        "config": to_dict(cfg),
        **(learner.lora_meta or {}),
    }
    ckpt.save(step, state=state, data_iter=it, meta=meta)


def restore_checkpoint(ckpt: Checkpointer, learner: Learner, key_data, it, problems_by_id,
                       stream: ReplacementStream, cfg: Config) -> tuple[int, Any, list[Rollout]]:
    # the newest step whose metadata reads (a damaged newest one is passed over with one line);
    # its arrays are then read or refused with one line
    _, meta = ckpt.restore(target={})
    step = ckpt.restored_step
    n, max_new = cfg.rl.prompts_per_step * cfg.rl.group_size, cfg.rl.max_new_tokens
    template = _rollout_arrays(
        Rollout(0, 0, [], cfg.rl.group_size, [[]] * n, [[]] * n, [np.zeros(0)] * n, [""] * n),
        cfg.model.max_seq_len, max_new)
    target = {**_device_state(learner), "rng": {"key": key_data}}
    for k in range(len(meta["pending"])):
        target[f"pending{k}"] = template
    state, meta = ckpt.restore(step, target=target, data_iter=it, mesh=learner.mesh)
    learner.params = nnx.merge_state(learner.params, state["params"])
    if learner.reference is not None:
        learner.reference = state["reference"]
    treedef = jax.tree.structure(learner.opt_state)
    learner.opt_state = jax.tree.unflatten(treedef, [state["opt_state"][k] for k in
                                                     sorted(state["opt_state"])])
    pending = [_rollout_from(state[f"pending{k}"], m, problems_by_id, cfg.rl.group_size)
               for k, m in enumerate(meta["pending"])]
    stream.position = int(meta.get("replacement_position", 0))  # absent: a run that drew none
    return int(meta["step"]), state["rng"]["key"], pending


# ---------------------------------------------------------------------------------------------
# The loop


def _held_out_report(before: dict, after: dict) -> str:
    def fmt(d, k):
        return f"{d[k]:.3f} [{d[k + '_lo']:.3f}, {d[k + '_hi']:.3f}]"

    return "\n".join([
        f"held-out ({after['n']} problems)   before                  after",
        f"  accuracy        {fmt(before, 'accuracy'):<24}{fmt(after, 'accuracy')}",
        f"  executability   {fmt(before, 'executability'):<24}{fmt(after, 'executability')}",
        f"  USD/problem     {before['usd_per_problem']:<24.6f}{after['usd_per_problem']:.6f}",
        f"  format valid    {before['format_valid']:<24.3f}{after['format_valid']:.3f}",
        f"  leak rate       {before['leak_rate']:<24.3f}{after['leak_rate']:.3f}",
    ])


def step_record(t: int, filled: Filled, stats: dict | None, spec: rewards.RewardSpec,
                timing: dict[str, float], spread_tol: float) -> dict:
    """One metrics.jsonl line: update statistics, outcome metrics of the batch trained on, the
    share of its groups with spread beyond `spread_tol` (`groups_with_spread`: those the update
    learns from), what dynamic sampling did (`groups_extra` drawn, `groups_replaced`,
    `groups_unfilled`, and `drawn_with_spread`: the share with spread of every group the step
    labelled), the strategy executions the step's labellings sent to the core
    (`core_calls_paid`) and answered from the call cache (`core_calls_replayed`), staleness and
    timings.

    `device_busy` is the fraction of the step's wall time the device spent sampling or
    updating; `pool_wait_s` the time the loop sat waiting for the core's labels.
    """
    skipped = stats is None
    stats = dict(stats or {})
    busy = timing["sample_s"] + timing["update_s"]
    rollout, labelled = filled.rollout, filled.labelled
    calls = [call_counts(lab) for lab in filled.labellings]
    return {
        "loss": stats.pop("loss", None),
        **stats,
        **outcome_metrics(rollout, labelled, spec),
        **{k: sum(c[k] for c in calls) for k in CALL_KEYS},
        "groups_with_spread": informative_share(labelled.rewards, rollout.group_size, spread_tol),
        "groups_extra": filled.extra,
        "groups_replaced": filled.replaced,
        "groups_unfilled": filled.unfilled,
        "drawn_with_spread": filled.drawn_with_spread,
        "update_skipped": int(skipped),
        "staleness": t - rollout.policy_step,
        **timing,
        "label_s": labelled.label_s,
        "device_busy": busy / timing["step_s"] if timing["step_s"] > 0 else None,
    }


def train(cfg: Config) -> dict:
    """Run (or resume) RL to cfg.rl.steps; returns the summary written to summary.json."""
    preflight.check(cfg, "rl")
    rl = cfg.rl
    spec = rewards.make_spec(rl.preset, rl.weights)
    estimator(rl.advantage)  # a misspelt estimator fails here, before any paid call
    spread_tol = rewards.spread_tolerance(spec, rl.cost_resolution_usd)
    stage = layout.stage(cfg.run_dir, rl.name)
    init = resolve_init(cfg)
    ckpt = Checkpointer(layout.checkpoints(cfg.run_dir, rl.name), keep=rl.keep_checkpoints)
    resume.begin(cfg, stage, "rl", ckpt, write=jax.process_index() == 0, inputs={"rl.init": init})
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(init)
    mesh = parallel.make_mesh(cfg.mesh)
    learner, mcfg = build_learner(cfg, init, mesh)
    task = tasks.for_run(cfg.task.name, cfg.task.options, cfg.run_dir)
    problems = prompts_that_fit(rl_pool(task.problems("train"), rl.problems, cfg.sample.n_problems),
                                tokenizer, task.family, spec, cfg)
    problems_by_id = {p.id: p for p in problems}
    it = rl_prompt_iterator(problems, rl.prompts_per_step, cfg.seed)
    stream = ReplacementStream(problems, cfg.seed)
    key_data = jax.random.key_data(jax.random.key(cfg.seed))
    start, pending_rollouts = 0, []
    if ckpt.latest_step() is not None:
        start, key_data, pending_rollouts = restore_checkpoint(
            ckpt, learner, key_data, it, problems_by_id, stream, cfg)
        resume.resumed(rl.name, start)
    rng = jax.random.wrap_key_data(jnp.asarray(key_data))
    writer = MetricsWriter(stage, tensorboard=cfg.metrics.tensorboard, wandb=cfg.metrics.wandb,
                           config=to_dict(cfg), name=rl.name)
    writer.truncate_after(start)
    heldout_path = stage / HELD_OUT_FILE
    heldout = json.loads(heldout_path.read_text()) if heldout_path.exists() else {}
    validation = prompts_that_fit(task.problems("validation"), tokenizer, task.family, spec,
                                  cfg)[: rl.held_out] if rl.held_out else []
    if start == 0 and rl.forecast_batches:  # what this stage will pay, before its first paid call
        with parallel.use_mesh(mesh):
            model = learner.sampling_model()
        told = forecast.rl_start_forecast(cfg, spec, model, tokenizer, problems, mesh)
        if jax.process_index() == 0:
            print(told, end="", flush=True)

    with open_pool(cfg, cfg.run_dir) as pool, \
            ThreadPoolExecutor(rl.staleness + 1, thread_name_prefix="label") as labeller:
        core = cfg.api.core
        ctx = LabelContext(
            pool=pool, task=task, spec=spec, stage=rl.name,
            price=lambda i, o: pool.ledger.prices.usd(core.model, i, o),
            core_alone=rewards.CoreAloneCache(stage / "core_alone.json") if spec.uses_core_alone else None,
            core_alone_samples=rl.core_only_samples, judge_max_tokens=rl.judge_max_tokens,
        )

        def evaluate() -> dict:
            with parallel.use_mesh(mesh):
                return held_out(ctx, learner.sampling_model(), tokenizer, validation,
                                max_new_tokens=rl.max_new_tokens).as_dict()

        if validation and "before" not in heldout:
            heldout["before"] = evaluate()
            heldout_path.write_text(json.dumps(heldout, indent=2) + "\n")

        def sample(problems: list, index: int, policy_step: int, stream_rng) -> Rollout:
            with parallel.use_mesh(mesh):
                return sample_rollout(
                    learner.sampling_model(), tokenizer, problems, task.family, spec,
                    index=index, policy_step=policy_step, group_size=rl.group_size,
                    max_new_tokens=rl.max_new_tokens, temperature=rl.temperature,
                    top_p=rl.top_p, rng=stream_rng)

        replacement_rng = jax.random.fold_in(rng, dynamic_sampling.RNG_STREAM)

        def fill(rollout: Rollout, labelled: Labelled, t: int) -> Filled:
            def sample_drawn(problems: list) -> Rollout:
                # the stream's position after the draw names it: a resumed run samples the same
                return sample(problems, stream.position, t, replacement_rng)

            return dynamic_sampling.fill(
                rollout, labelled, spread_tol=spread_tol, max_extra=rl.max_extra_groups,
                draw=stream.draw, sample=sample_drawn, label=lambda r: label_rollout(ctx, r))

        queue: collections.deque[tuple[Rollout, Future]] = collections.deque(
            (r, labeller.submit(label_rollout, ctx, r)) for r in pending_rollouts)
        produced = start + len(queue)
        bar = progress_bar(rl.steps, initial=start, desc=rl.name, enabled=cfg.metrics.progress)
        for t in range(start, rl.steps):
            t0 = time.perf_counter()
            sample_s = 0.0
            while produced < min(rl.steps, t + rl.staleness + 1):
                r = sample(next(it), produced, t, rng)
                sample_s += r.sample_s
                queue.append((r, labeller.submit(label_rollout, ctx, r)))
                produced += 1
            rollout, future = queue.popleft()
            w0 = time.perf_counter()
            labelled = future.result()
            pool_wait_s = time.perf_counter() - w0
            filled = fill(rollout, labelled, t)
            if pool.stopped:  # budget reached: resume from the last checkpoint, replaying the cache
                ckpt.wait()
                pool.raise_if_stopped()
            if filled.unfilled:
                log.info("%s step %d: %d group(s) without spread left in the batch after %d extra "
                         "drawn (rl.max_extra_groups=%d)", rl.name, t + 1, filled.unfilled,
                         filled.extra, rl.max_extra_groups)
            u0 = time.perf_counter()
            stats = learner.update(filled.rollout, filled.labelled, rl, spread_tol)
            update_s = time.perf_counter() - u0
            timing = {"step_s": time.perf_counter() - t0, "sample_s": sample_s,
                      "update_s": update_s, "pool_wait_s": pool_wait_s}
            record = step_record(t, filled, stats, spec, timing, spread_tol)
            if stats is None:
                print(f"{rl.name} step {t + 1}: no scored sample "
                      f"({filled.labelled.errors or 'all excluded'}); weights unchanged",
                      file=sys.stderr)
            writer.log(t + 1, **record)
            bar.update()
            bar.set_postfix(reward=f"{record['reward'] or 0:.3f}", acc=f"{record['accuracy'] or 0:.2f}",
                            alpha=f"{record['executability'] or 0:.2f}",
                            spread=f"{record['groups_with_spread']:.2f}")
            if (t + 1) % rl.checkpoint_every == 0 or t + 1 == rl.steps:
                pool.checkpoint()
                save_checkpoint(ckpt, t + 1, learner, key_data, it, [r for r, _ in queue], stream,
                                cfg)
        bar.close()
        ckpt.wait()
        if validation and heldout.get("after_step") != rl.steps:
            heldout["after"] = evaluate()
            heldout["after_step"] = rl.steps
            heldout_path.write_text(json.dumps(heldout, indent=2) + "\n")
        totals = pool.ledger.totals()
    writer.close()
    ckpt.close()
    out_dir = layout.guide(cfg.run_dir, rl.name)
    hf.save(lora.merged(nnx.merge(learner.graphdef, learner.params)), mcfg, out_dir,
            tokenizer=tokenizer)
    summary = {
        "steps": rl.steps, "preset": rl.preset, "init": str(init), "heldout": heldout,
        "ledger": {k: v for k, v in totals.items()
                   if k in (rl.name, f"{rl.name}.judge", "core_only", "rl_eval", "rl_eval.judge", "judge")},
    }
    (stage / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def run(cfg: Config, **_: Any) -> int:
    summary = train(cfg)
    held = summary["heldout"]
    if "before" in held and "after" in held:
        print(_held_out_report(held["before"], held["after"]))
    print(f"{cfg.rl.name}: guide written to {layout.guide(cfg.run_dir, cfg.rl.name)}")
    return 0
