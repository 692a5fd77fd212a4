import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from exectune_jax.config import LoraConfig, load_config
from exectune_jax.data import tasks
from exectune_jax.errors import UserError
from exectune_jax.models import hf, lora, sampler
from exectune_jax.models.architecture import ModelConfig
from exectune_jax.models.transformer import Transformer
from exectune_jax.sim import serving
from exectune_jax.train import grpo, grpo_loss, rewards, rl_step, rollouts
from exectune_jax.train.checkpoint import Checkpointer
from exectune_jax.train.metrics import read_metrics
from exectune_jax.train.advantages import group_advantages, group_rewards, informative_share


# ---------------------------------------------------------------------------------------------
# Advantages


def test_group_advantages_normalise_within_each_group():
    rewards = np.array([[1.0, 0.0, 1.0, 0.0], [2.0, 2.0, 2.0, 5.0]])
    adv = group_advantages(rewards, np.ones_like(rewards, bool))
    np.testing.assert_allclose(adv[0], [1, -1, 1, -1], atol=1e-6)
    # mean 2.75, std sqrt(1.6875) = 1.299
    np.testing.assert_allclose(adv[1], [-0.57735, -0.57735, -0.57735, 1.73205], atol=1e-5)


def test_failed_samples_leave_the_baseline_and_get_no_advantage():
    rewards = np.array([[1.0, 0.0, 123.0, 0.0]])
    valid = np.array([[True, True, False, True]])
    adv = group_advantages(rewards, valid)
    # valid rewards 1, 0, 0: mean 1/3, std sqrt(2)/3
    np.testing.assert_allclose(adv[0], [1.41421, -0.70711, 0.0, -0.70711], atol=1e-5)


def test_uninformative_groups_get_zero_advantage():
    rewards = np.array([[0.5, 0.5, 0.5], [1.0, 0.0, 0.0]])
    valid = np.array([[True, True, True], [True, False, False]])
    assert not group_advantages(rewards, valid).any()


def test_the_informative_share_counts_the_groups_with_a_non_zero_advantage():
    # spread; all equal; one valid reward left; spread among the valid ones
    rewards = [1.0, 0.0, 1.0, 1.0, 1.0, None, None, None, 0.0, None, 1.0, 0.0]
    assert informative_share(rewards, 3) == 0.5


def test_group_rewards_marks_failed_calls_invalid():
    values, valid = group_rewards([1.0, None, 0.0, 2.0], group_size=2)
    np.testing.assert_array_equal(valid, [[True, False], [True, True]])
    np.testing.assert_array_equal(values, [[1.0, 0.0], [0.0, 2.0]])
    with pytest.raises(ValueError):
        group_rewards([1.0, 2.0, 3.0], group_size=2)


# ---------------------------------------------------------------------------------------------
# Loss pieces


def test_token_logprobs_match_log_softmax_with_temperature():
    logits = jnp.array([[[2.0, 0.0, 0.0]]])
    lp = grpo_loss.token_logprobs(logits, jnp.array([[0]]), temperature=2.0)
    # softmax([1, 0, 0])[0] = e / (e + 2)
    assert float(lp[0, 0]) == pytest.approx(np.log(np.e / (np.e + 2)), abs=1e-6)
    uniform = grpo_loss.token_entropy(jnp.zeros((1, 1, 4)))
    assert float(uniform[0, 0]) == pytest.approx(np.log(4), abs=1e-6)


def test_clipped_surrogate_caps_the_ratio_in_the_direction_of_the_advantage():
    old = jnp.zeros((2, 3))
    logp = jnp.log(jnp.array([[1.5, 1.0, 0.5], [1.5, 1.0, 0.5]]))
    adv = jnp.array([1.0, -1.0])
    loss, clipped = grpo_loss.clipped_surrogate(logp, old, adv, clip_eps=0.2)
    # A>0: min(rho, clip(rho)) -> 1.2, 1.0, 0.5 ; A<0: min(-rho, -clip(rho)) -> -1.5, -1.0, -0.8
    np.testing.assert_allclose(loss[0], [-1.2, -1.0, -0.5], atol=1e-6)
    np.testing.assert_allclose(loss[1], [1.5, 1.0, 0.8], atol=1e-6)
    np.testing.assert_array_equal(clipped, [[True, False, False], [False, False, True]])


def test_kl_estimator_is_zero_at_the_reference_and_positive_elsewhere():
    logp = jnp.array([[-1.0, -2.0]])
    np.testing.assert_allclose(grpo_loss.kl_to_reference(logp, logp), 0.0, atol=1e-7)
    kl = grpo_loss.kl_to_reference(jnp.array([[-1.0]]), jnp.array([[-2.0]]))
    assert float(kl[0, 0]) == pytest.approx(np.exp(-1) + 1 - 1)


def test_masked_mean_weighs_each_completion_token_equally():
    x = jnp.array([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
    mask = jnp.array([[1, 1, 0], [1, 0, 0]])
    assert float(grpo_loss.masked_mean(x, mask)) == pytest.approx(2.0)
    assert float(grpo_loss.masked_mean(x, jnp.zeros_like(mask))) == 0.0


def test_on_policy_loss_gradient_is_advantage_weighted_log_likelihood():
    """At rho = 1 and ref = pi the GRPO gradient equals -A * grad log pi (REINFORCE)."""
    old = jnp.array([[-1.2, -0.3]])
    adv = jnp.array([0.7])

    def loss(lp):
        per_token, _ = grpo_loss.grpo_token_loss(lp, old, lp, adv, clip_eps=0.2, beta=0.04)
        return per_token.sum()

    np.testing.assert_allclose(jax.grad(loss)(old), [[-0.7, -0.7]], atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Device programs on a tiny model


TINY = ModelConfig(model_type="qwen3", vocab_size=64, hidden_size=64, intermediate_size=128,
                   num_layers=2, num_heads=4, num_kv_heads=2, eos_token_id=1)
LAYOUT = rl_step.Layout(rows=4, micro=2, seq_len=12)


@pytest.fixture(scope="module")
def tiny():
    """Params, a deterministic batch and the compiled programs, shared by the tests below."""
    graphdef, params = nnx.split(Transformer(TINY, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    prompts = [rng.integers(2, 64, n).tolist() for n in (3, 4, 2, 5)]
    completions = [rng.integers(2, 64, n).tolist() for n in (5, 2, 6, 4)]
    logprob_fn = rl_step.make_logprob_fn(graphdef)
    probe = rl_step.build_batch(prompts, completions, [np.zeros(len(c)) for c in completions],
                                np.zeros(4), np.ones(4, bool), LAYOUT)
    on_policy = np.asarray(logprob_fn(params, probe))
    old = [on_policy.reshape(4, -1)[i, len(p) - 1: len(p) - 1 + len(c)]
           for i, (p, c) in enumerate(zip(prompts, completions))]
    batch = rl_step.build_batch(prompts, completions, old, np.array([1.0, -0.5, 0.25, -0.75]),
                                np.ones(4, bool), LAYOUT)
    tx = optax.sgd(0.1)
    step = rl_step.make_train_step(graphdef, tx, clip_eps=0.2, beta=0.04)
    return dict(graphdef=graphdef, params=params, batch=batch, tx=tx, step=step,
                logprob_fn=logprob_fn, prompts=prompts, completions=completions)


def _copy(tree):
    return jax.tree.map(jnp.copy, tree)


def test_build_batch_masks_exactly_the_completion_targets():
    batch = rl_step.build_batch([[5, 6, 7]], [[8, 9]], [np.array([-0.1, -0.2])], np.array([2.0]),
                                np.array([True]), rl_step.Layout(rows=1, micro=1, seq_len=6))
    np.testing.assert_array_equal(batch["tokens"][0, 0], [5, 6, 7, 8, 9, 0])
    # targets are tokens[1:] = 6 7 8 9 0: the completion tokens 8, 9 sit at target slots 2, 3
    np.testing.assert_array_equal(batch["mask"][0, 0], [0, 0, 1, 1, 0])
    np.testing.assert_allclose(batch["old_logp"][0, 0], [0, 0, -0.1, -0.2, 0])
    excluded = rl_step.build_batch([[5]], [[8]], [np.array([-0.1])], np.array([1.0]),
                                   np.array([False]), rl_step.Layout(rows=1, micro=1, seq_len=3))
    assert not excluded["mask"].any()


def test_build_batch_rejects_sequences_longer_than_the_context():
    with pytest.raises(UserError, match="model.max_seq_len"):
        rl_step.build_batch([[1] * 5], [[2] * 3], [np.zeros(3)], np.zeros(1), np.ones(1, bool),
                            rl_step.Layout(rows=1, micro=1, seq_len=6))


@pytest.mark.parametrize("remat", ["full", "save_dots"])
def test_rematerialised_update_gives_the_same_step_as_none(tiny, remat):
    rematted, _ = nnx.split(Transformer(TINY, rngs=nnx.Rngs(0), remat=remat))
    ref = tiny["logprob_fn"](tiny["params"], tiny["batch"])
    results = []
    for graphdef in (tiny["graphdef"], rematted):
        step = rl_step.make_train_step(graphdef, tiny["tx"], clip_eps=0.2, beta=0.04)
        params = _copy(tiny["params"])
        results.append(step(params, tiny["tx"].init(params), tiny["batch"], ref))
    (p_none, _, s_none), (p_remat, _, s_remat) = results
    assert float(s_remat["grad_norm"]) == pytest.approx(float(s_none["grad_norm"]), rel=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), p_none, p_remat)


def test_head_run_in_chunks_gives_the_same_log_probs_and_update(tiny):
    ref = tiny["logprob_fn"](tiny["params"], tiny["batch"])
    chunked_ref = rl_step.make_logprob_fn(tiny["graphdef"], head_chunk=4)(tiny["params"],
                                                                         tiny["batch"])
    np.testing.assert_allclose(chunked_ref, ref, atol=1e-6)
    results = []
    for chunk in (0, 4):
        step = rl_step.make_train_step(tiny["graphdef"], tiny["tx"], clip_eps=0.2, beta=0.04,
                                       head_chunk=chunk)
        params = _copy(tiny["params"])
        results.append(step(params, tiny["tx"].init(params), tiny["batch"], ref))
    (p_whole, _, s_whole), (p_chunked, _, s_chunked) = results
    for key in ("loss", "entropy", "grad_norm"):
        assert float(s_chunked[key]) == pytest.approx(float(s_whole[key]), rel=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), p_whole, p_chunked)


def test_first_update_is_on_policy_with_zero_kl(tiny):
    ref = tiny["logprob_fn"](tiny["params"], tiny["batch"])
    params = _copy(tiny["params"])
    _, _, stats = tiny["step"](params, tiny["tx"].init(params), tiny["batch"], ref)
    assert float(stats["ratio"]) == pytest.approx(1.0, abs=1e-5)
    assert float(stats["kl"]) == pytest.approx(0.0, abs=1e-6)
    assert float(stats["clip_frac"]) == 0.0
    assert float(stats["tokens"]) == sum(len(c) for c in tiny["completions"])


def test_micro_batching_gives_the_full_batch_update(tiny):
    ref = tiny["logprob_fn"](tiny["params"], tiny["batch"])
    whole = {k: v.reshape(1, 4, *v.shape[2:]) for k, v in tiny["batch"].items()}
    whole_ref = jnp.reshape(ref, (1, 4, -1))
    step_whole = rl_step.make_train_step(tiny["graphdef"], tiny["tx"], clip_eps=0.2, beta=0.04)
    a = _copy(tiny["params"])
    b = _copy(tiny["params"])
    new_a, _, sa = tiny["step"](a, tiny["tx"].init(a), tiny["batch"], ref)
    new_b, _, sb = step_whole(b, tiny["tx"].init(b), whole, whole_ref)
    assert float(sa["loss"]) == pytest.approx(float(sb["loss"]), abs=1e-6)
    for x, y in zip(jax.tree.leaves(new_a), jax.tree.leaves(new_b)):
        np.testing.assert_allclose(x, y, atol=1e-6)


def test_batch_without_scored_tokens_moves_neither_weights_nor_optimizer(tiny):
    empty = {**tiny["batch"], "mask": np.zeros_like(tiny["batch"]["mask"])}
    ref = tiny["logprob_fn"](tiny["params"], empty)
    tx = optax.adam(0.1)
    params = _copy(tiny["params"])
    opt = tx.init(params)
    before = jax.tree.map(np.asarray, (params, opt))
    step = rl_step.make_train_step(tiny["graphdef"], tx, clip_eps=0.2, beta=0.04)
    after = step(params, opt, empty, ref)[:2]
    for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
        np.testing.assert_array_equal(x, np.asarray(y))


def test_positive_advantage_raises_its_completion_likelihood(tiny):
    ref = tiny["logprob_fn"](tiny["params"], tiny["batch"])
    params = _copy(tiny["params"])
    new, _, _ = tiny["step"](params, tiny["tx"].init(params), tiny["batch"], ref)
    after = np.asarray(tiny["logprob_fn"](new, tiny["batch"]))
    mask = tiny["batch"]["mask"] > 0
    gain = ((after - np.asarray(ref)) * mask).sum(-1).reshape(-1)
    adv = tiny["batch"]["advantages"].reshape(-1)
    assert gain[adv > 0].min() > 0 and gain[adv < 0].max() < 0


def test_sampler_log_probs_are_the_ratio_denominator(tiny):
    model = nnx.merge(tiny["graphdef"], tiny["params"])
    out = sampler.generate(model, tiny["prompts"], max_new_tokens=6, rng=jax.random.key(1),
                           stop_token_ids=())
    batch = rl_step.build_batch(tiny["prompts"], out.tokens, out.logprobs, np.zeros(4),
                                np.ones(4, bool), LAYOUT)
    recomputed = np.asarray(tiny["logprob_fn"](tiny["params"], batch))
    mask = batch["mask"] > 0
    np.testing.assert_allclose(recomputed[mask], batch["old_logp"][mask], atol=1e-5)


# ---------------------------------------------------------------------------------------------
# The stage end to end: a tiny guide, the embedded sim core, a few steps


@pytest.fixture(scope="session")
def tiny_guide(tmp_path_factory) -> Path:
    from exectune_jax.data import tasks
    from exectune_jax.sim.guide import BaseGuideSpec, build_base_guide

    out = tmp_path_factory.mktemp("guide") / "guide"
    spec = BaseGuideSpec(vocab_size=400, hidden_size=64, intermediate_size=128, num_layers=2,
                         num_heads=4, num_kv_heads=2, warmup_steps=2, warmup_batch_size=4)
    build_base_guide(tasks.get("arith", **TASK).problems("train"), spec, 0, out)
    return out


TASK = {"n_train": 64, "n_validation": 8, "n_test": 8}


def rl_overrides(run_dir, guide, *extra) -> list[str]:
    return [
        f"run_dir={run_dir}", f"rl.init={guide}", "mesh.fsdp=1", "metrics.progress=false",
        *(f"task.options.{k}={v}" for k, v in TASK.items()),
        "rl.preset=advisor", "rl.steps=2", "rl.prompts_per_step=2", "rl.group_size=4",
        "rl.micro_batch=4", "rl.max_new_tokens=16", "rl.held_out=4", "rl.checkpoint_every=1",
        "model.max_seq_len=256",
        *extra,
    ]


def train(cfg) -> dict:
    """The stage as the CLI runs it: its "sim" endpoints served for the call."""
    with serving(cfg) as served:
        return grpo.train(served)


def test_rl_stage_logs_every_metric_and_writes_the_guide(tmp_path, tiny_guide):
    cfg = load_config(None, rl_overrides(tmp_path, tiny_guide))
    summary = train(cfg)
    rows = read_metrics(tmp_path / "rl")
    assert [r["step"] for r in rows] == [1, 2]
    expected = {"loss", "kl", "entropy", "accuracy", "format_valid", "leak_rate", "executability",
                "executability_lo", "executability_hi", "core_input_tokens", "core_output_tokens",
                "usd", "device_busy", "pool_wait_s", "staleness", "groups_with_spread",
                *(f"reward_{t}" for t in rewards.TERMS)}
    assert expected <= set(rows[0])
    assert rows[0]["scored"] == 8 and rows[0]["failed_calls"] == 0
    assert rows[1]["staleness"] == 1  # batch 2 was sampled while batch 1 was being labelled
    assert (tmp_path / "rl" / "guide" / "config.json").exists()
    assert {"before", "after"} <= set(summary["heldout"])
    assert summary["ledger"]["rl"]["calls"] >= 16


def test_rl_learns_on_policy_at_the_sampling_temperature_and_top_p(tmp_path, tiny_guide):
    cfg = load_config(None, rl_overrides(tmp_path, tiny_guide, "rl.steps=1", "rl.held_out=0",
                                         "rl.temperature=0.7", "rl.top_p=0.9",
                                         "rl.advantage=batch"))
    train(cfg)
    (row,) = read_metrics(tmp_path / "rl")
    assert row["ratio"] == pytest.approx(1.0, abs=1e-4)  # the first batch is the policy's own
    assert {"groups_with_spread", "core_calls_paid", "core_calls_replayed"} <= set(row)


def test_an_unknown_advantage_estimator_fails_before_any_call(tmp_path, tiny_guide):
    with pytest.raises(UserError, match="rl.advantage"):
        train(load_config(None, rl_overrides(tmp_path, tiny_guide, "rl.advantage=ppo")))
    assert not (tmp_path / "ledger.jsonl").exists()


def test_a_batch_whose_core_calls_all_fail_is_reported_and_moves_no_weight(
        tmp_path, tiny_guide, capsys):
    cfg = load_config(None, rl_overrides(
        tmp_path, tiny_guide, "rl.steps=1", "rl.held_out=0", "api.max_retries=0",
        "api.core.base_url=http://127.0.0.1:9", "api.core.timeout_s=2"))
    train(cfg)
    (row,) = read_metrics(tmp_path / "rl")
    assert row["update_skipped"] == 1 and row["loss"] is None
    assert row["failed_calls"] == 8 and row["scored"] == 0
    assert "weights unchanged" in capsys.readouterr().err
    before = hf.load(tiny_guide)[0]
    after = hf.load(tmp_path / "rl" / "guide")[0]
    for x, y in zip(jax.tree.leaves(nnx.state(before)), jax.tree.leaves(nnx.state(after))):
        np.testing.assert_array_equal(x, y)


def _learning_metrics(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in grpo.TIMING_KEYS + rollouts.CALL_KEYS}
            for r in read_metrics(run_dir / "rl")]


# the last 16 of the 64 train problems, after the 48 acceptance covers; up to 4 extra groups a
# step; an improve weight, so that core_alone.json records every problem RL labelled
DYNAMIC = ("sample.n_problems=48", "rl.problems=after_sample", "rl.max_extra_groups=4",
           "rl.weights={improve: 0.5}", "rl.held_out=0")
STEP_KEYS = {"groups_with_spread", "drawn_with_spread", "groups_extra", "groups_replaced",
             "groups_unfilled", "core_calls_paid", "core_calls_replayed", "executability"}


def test_dynamic_sampling_draws_from_the_pool_logs_each_step_and_resumes_exactly(
        tmp_path, tiny_guide):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    train(load_config(None, rl_overrides(whole, tiny_guide, *DYNAMIC)))
    rows = read_metrics(whole / "rl")
    assert all(STEP_KEYS <= set(r) for r in rows)
    groups, g = 2, 4  # rl.prompts_per_step, rl.group_size
    for r in rows:
        assert 0 <= r["groups_extra"] <= 4 and r["groups_replaced"] <= r["groups_extra"]
        # every group the update keeps without spread is counted as left unfilled
        assert r["groups_unfilled"] == round(groups * (1 - r["groups_with_spread"]))
        # each row of the batch and of every drawn group went to the core once (no gate here)
        assert r["core_calls_paid"] + r["core_calls_replayed"] == (groups + r["groups_extra"]) * g
    assert sum(r["groups_extra"] for r in rows) > 0, "no step drew an extra group"
    train_ids = [p.id for p in tasks.get("arith", **TASK).problems("train")]
    labelled = set(json.loads((whole / "rl" / "core_alone.json").read_text()))
    assert labelled <= set(train_ids[48:])
    assert len(labelled) > groups  # the drawn groups' problems besides the first batch's
    # resumed from step 1: the same draws, samples, metrics and guide
    shutil.copytree(whole, resumed)
    for stale in ("checkpoints/2", "guide", "summary.json"):
        path = resumed / "rl" / stale
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    train(load_config(None, rl_overrides(resumed, tiny_guide, *DYNAMIC)))
    assert _learning_metrics(resumed) == _learning_metrics(whole)
    for x, y in zip(jax.tree.leaves(nnx.state(hf.load(whole / "rl" / "guide")[0])),
                    jax.tree.leaves(nnx.state(hf.load(resumed / "rl" / "guide")[0]))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _paid(run_dir: Path) -> tuple[int, float]:
    rows = [json.loads(line) for line in (run_dir / "ledger.jsonl").read_text().splitlines()]
    paid = [r for r in rows if not r["cached"]]
    return len(paid), sum(r["usd"] for r in paid)


@pytest.mark.slow
def test_resume_after_sigkill_gives_identical_metrics_and_no_repeated_paid_calls(
        tmp_path, tiny_guide):
    args = rl_overrides("{dir}", tiny_guide, "rl.steps=4", "rl.checkpoint_every=2")
    command = [sys.executable, "-m", "exectune_jax.cli", "rl"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}

    def launch(run_dir):
        return subprocess.Popen(command + [a.format(dir=run_dir) for a in args], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    train(load_config(None, [a.format(dir=whole) for a in args]))  # the reference, uninterrupted
    victim = launch(killed)
    deadline = time.time() + 600
    while not (killed / "rl" / "checkpoints" / "2").exists():
        assert victim.poll() is None and time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (killed / "rl" / "summary.json").exists()
    resumed = launch(killed)
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read().decode()[-2000:]
    assert "resumed rl from step " in resumed.stderr.read().decode()
    assert _learning_metrics(killed) == _learning_metrics(whole)
    # the same calls paid once each; USD agrees up to the prompt-cache reads that the resumed
    # process's fresh provider cache could not give its first calls of each prompt prefix (how
    # many of the concurrent first calls miss depends on timing: 0.1% of the USD was seen on a
    # loaded machine); one call paid twice would add about 1/68 of it, well past 0.5%
    (calls, usd), (whole_calls, whole_usd) = _paid(killed), _paid(whole)
    assert calls == whole_calls and usd == pytest.approx(whole_usd, rel=5e-3)


# ---------------------------------------------------------------------------------------------
# LoRA: only the adapters train; the reference is the base without them


LORA = LoraConfig(rank=4, alpha=8.0)


def test_lora_update_moves_only_the_adapters_and_the_reference_stays_the_base(tiny):
    model = Transformer(TINY, rngs=nnx.Rngs(0))
    lora.apply(model, LORA)
    graphdef, params = nnx.split(model)
    ref_fn = rl_step.make_logprob_fn(graphdef, lora.without_adapters)
    base_logp = np.asarray(tiny["logprob_fn"](tiny["params"], tiny["batch"]))
    ref = ref_fn(params, tiny["batch"])
    np.testing.assert_array_equal(np.asarray(ref), base_logp)
    step = rl_step.make_train_step(graphdef, tiny["tx"], clip_eps=0.2, beta=0.04,
                                   wrt=lora.TRAINABLE)
    before = jax.tree.map(np.asarray, params)
    opt = tiny["tx"].init(nnx.filter_state(params, lora.TRAINABLE))
    new, _, _ = step(_copy(params), opt, tiny["batch"], ref)
    frozen_before, frozen_after = (nnx.filter_state(p, lora.FROZEN) for p in (before, new))
    for x, y in zip(jax.tree.leaves(frozen_before), jax.tree.leaves(frozen_after)):
        np.testing.assert_array_equal(x, np.asarray(y))
    b_after = nnx.filter_state(new, lora.TRAINABLE)["layers"]["attn"]["q_proj"]["lora_b"]
    assert np.abs(np.asarray(b_after.get_value())).max() > 0
    np.testing.assert_array_equal(np.asarray(ref_fn(new, tiny["batch"])), base_logp)
    after = np.asarray(rl_step.make_logprob_fn(graphdef)(new, tiny["batch"]))
    mask = tiny["batch"]["mask"] > 0
    gain = ((after - base_logp) * mask).sum(-1).reshape(-1)
    adv = tiny["batch"]["advantages"].reshape(-1)
    assert gain[adv > 0].min() > 0 and gain[adv < 0].max() < 0


def _adapter_paths(step_dir: Path) -> list[str]:
    saved = ocp.PyTreeCheckpointer().metadata(step_dir / "params").item_metadata.tree
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(saved)[0]]


def test_lora_rl_checkpoints_only_adapters_and_resumes_exactly(tmp_path, tiny_guide):
    lora_args = ("model.lora={rank: 4, alpha: 8}", "rl.held_out=0", "rl.lr=3e-2")
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    train(load_config(None, rl_overrides(whole, tiny_guide, *lora_args)))
    step_dir = whole / "rl" / "checkpoints" / "2"
    paths = _adapter_paths(step_dir)
    assert paths and all("lora_a" in p or "lora_b" in p for p in paths), paths
    assert not (step_dir / "reference").exists()
    _, meta = Checkpointer(whole / "rl" / "checkpoints").restore(2, target={})
    assert meta["lora"]["base"] == str(tiny_guide.resolve()) and meta["lora"]["rank"] == 4
    # the guide is the untouched base plus the trained adapters, merged: not the base itself
    base = hf.load(tiny_guide)[0]
    guide = hf.load(whole / "rl" / "guide")[0]
    changed = [float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in
               zip(jax.tree.leaves(nnx.state(base)), jax.tree.leaves(nnx.state(guide)))]
    assert max(changed) > 0
    lora.apply(base, LORA, seed=0)
    with Checkpointer(whole / "rl" / "checkpoints") as ckpt:
        state, _ = ckpt.restore(2, target={"params": nnx.state(base, lora.TRAINABLE)})
    nnx.update(base, state["params"])
    tokens, positions = np.arange(2, 14)[None], np.arange(12)[None]
    np.testing.assert_allclose(np.asarray(guide(tokens, positions)),
                               np.asarray(base(tokens, positions)), atol=1e-5)
    # resume from step 1: the same metrics and the same guide
    shutil.copytree(whole, resumed)
    for stale in ("checkpoints/2", "guide", "summary.json"):
        path = resumed / "rl" / stale
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    train(load_config(None, rl_overrides(resumed, tiny_guide, *lora_args)))
    first = [(d / "rl" / "metrics.jsonl").read_text().splitlines()[0] for d in (whole, resumed)]
    assert first[0] == first[1]  # step 1 was restored, not re-run (its timings would differ)
    assert _learning_metrics(resumed) == _learning_metrics(whole)
    again = hf.load(resumed / "rl" / "guide")[0]
    for x, y in zip(jax.tree.leaves(nnx.state(guide)), jax.tree.leaves(nnx.state(again))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
