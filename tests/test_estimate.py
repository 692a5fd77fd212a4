"""`exectune estimate`: the pilot's scaling, the budget warning, that the run replays the pilot
instead of paying for it again, and the replays it projects: RL's core-alone calls that sampling
already sent, and the guide pilot's measured repeats, which RL tells before it pays."""

import json

import numpy as np
import pytest

from exectune_jax import cost, estimate
from exectune_jax.api import open_pool
from exectune_jax.api.ledger import load_prices
from exectune_jax.cli import main
from exectune_jax.config import load_config
from exectune_jax.data import tasks
from exectune_jax.sim import serving
from exectune_jax.train import forecast, grpo, rewards
from exectune_jax.train.rollouts import LabelContext, Rollout, label_rollout

# RL without dynamic sampling: the projections checked here against a real run are exact for RL's
# own batches, while the groups dynamic sampling draws depend on outcomes (the forecast counts its
# cap: tests/train/test_forecast.py)
SIZES = ["task.options={n_train: 16, n_validation: 2, n_test: 8}", "sample.n_problems=16",
         "sample.proposals=2", "rl.steps=2", "rl.prompts_per_step=2", "rl.group_size=2", "rl.held_out=0",
         "rl.max_extra_groups=0", "eval.n_problems=8", "metrics.progress=false"]


def test_estimate_scales_the_pilot_warns_on_the_budget_and_the_run_replays_the_pilot(tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = [f"run_dir={run_dir}", *SIZES]
    assert main(["estimate", "--pilot", "4", *args, "api.budget_usd=0.0001"]) == 2  # the pilot alone is dearer
    assert "the pilot of 4 problems reached api.budget_usd" in capsys.readouterr().err
    assert main(["estimate", "--pilot", "4", *args, "api.budget_usd=0.1"]) == 0
    out = capsys.readouterr().out
    doc = json.loads((run_dir / "estimate.json").read_text())
    rows = {r["stage"]: r for r in doc["stages"]}
    before_eval = sum(rows[s]["online_cached_usd"] for s in ("sample", "rl", "core_only"))
    assert before_eval < 0.1 < before_eval + rows["eval"]["online_cached_usd"]  # sizes chosen so
    assert "warning: api.budget_usd=$0.1000 would stop stage eval" in out
    pilot = doc["pilot"]
    paid = [json.loads(line) for line in (run_dir / "ledger.jsonl").read_text().splitlines()
            if not json.loads(line)["cached"] and json.loads(line)["stage"].startswith("sample")]
    assert rows["sample"]["calls"] == pytest.approx(len(paid) / 4 * 16)
    assert pilot["problems"] == 4 and set(rows) == {"sample", "rl", "core_only", "eval"}
    # the follow check's judge calls are their own endpoint: one per guided core execution
    per = pilot["per_problem"]
    judged = [r for r in paid if r["stage"].endswith(".judge")]
    assert judged and per["judge.calls"] == pytest.approx(len(judged) / 4)
    assert per["core.calls"] == pytest.approx(sum(r["stage"] == "sample.core" for r in paid) / 4)
    # eval: 8 problems x (core_only + 5 guides, the advisor among them, + core_strong) core calls
    # and a judge call per guided one; RL: steps x prompts x group core calls, each judged
    assert rows["eval"]["calls"] == 8 * 7 + 8 * 5 and rows["rl"]["calls"] == 2 * (2 * 2 * 2)
    assert rows["eval"]["batch_usd"] == pytest.approx(rows["eval"]["online_usd"] / 2)
    assert rows["rl"]["batchable"] is False

    assert main(["sample", *args]) == 0  # the run replays the pilot's calls
    ledger = [json.loads(line) for line in (run_dir / "ledger.jsonl").read_text().splitlines()]
    replays = [r for r in ledger[len(paid):] if r["cached"] and r["stage"].startswith("sample")]
    assert len(replays) >= len(paid)
    cfg = load_config(None, args)
    assert estimate.run_pilot(cfg, 4) == cost.Pilot(**pilot)  # kept, not re-measured from replays
    assert estimate.run_pilot(cfg, 6) is None  # the cache would hide the pilot's work: stated defaults
    assert "no pilot:" in capsys.readouterr().out


def test_judge_calls_read_the_projected_reply_and_advice_lengthens_the_core_alone_reply():
    cfg = load_config(None, SIZES)
    pilot = cost.Pilot(problems=4, per_problem={}, core_output=50.0, teacher_output=40.0,
                           strategy=cost.DEFAULT_STRATEGY, scale=1.0, alone_output=200.0, judge_output=10.0)
    lines = estimate.project(cfg, pilot, rl_stages=(("advisor_rl", "advisor"), ("rl", "exectune")))
    per_call = {(ln.stage, ln.endpoint): ln.output_tokens / ln.calls for ln in lines if ln.calls}
    advice = 200.0 * cost.ADVICE_LENGTHENS  # the core-alone reply, lengthened by the advice
    assert per_call["advisor_rl", "core"] == pytest.approx(advice) and per_call["rl", "core"] == 50.0
    assert {ln.endpoint for ln in lines if ln.stage == "core_only"} == {"core"}  # nothing to judge
    judge = {ln.stage: ln for ln in lines if ln.endpoint == "judge" and ln.stage.endswith("rl")}
    assert {ln.output_tokens / ln.calls for ln in judge.values()} == {10.0}
    # the same prompts and strategy: the advisor's judge reads the longer reply
    gap = judge["advisor_rl"].input_tokens / judge["advisor_rl"].calls - judge["rl"].input_tokens / judge["rl"].calls
    assert gap == pytest.approx(advice - 50.0)
    # eval: the base guide's and the advisor's core calls at the advice length, trained guides'
    # at the executed-strategy length; core_only and core_strong unjudged
    evals = [ln for ln in lines if ln.stage == "eval"]
    n = cfg.eval.n_problems
    core = sorted((ln.output_tokens / ln.calls, ln.calls / n) for ln in evals if ln.endpoint == "core")
    # 3 trained guides (the first, then the two that repeat it in part); core_only; base + advisor
    assert core == [(50.0, 1), (50.0, 2), (200.0, 1), (pytest.approx(advice), 2)]
    assert sum(ln.calls for ln in evals if ln.endpoint == "judge") == n * len(cfg.eval.guides)


def test_each_listed_core_is_projected_to_execute_every_guide_under_its_own_stages_and_price():
    cfg = load_config(None, [*SIZES, "eval.cores=[core, core_next]", "eval.core_strong=false"])
    lines = estimate.project(cfg, None, rl_stages=())
    first = [ln for ln in lines if ln.stage == "eval"]
    other = [ln for ln in lines if ln.stage == "eval.core_next"]
    assert {ln.endpoint for ln in first} == {"core", "judge"} and {ln.endpoint for ln in other} == {"core_next", "judge"}
    assert {ln.model for ln in other if ln.endpoint == "core_next"} == {"sim-core-next"}
    calls = lambda group: sorted((ln.endpoint.startswith("core"), ln.calls, ln.replayed) for ln in group)  # noqa: E731
    assert calls(first) == calls(other)  # the same guides' strategies, executed and judged again
    rows = {r["stage"]: r for r in cost.stage_table(load_prices(), lines)}
    assert rows["eval.core_next"]["online_usd"] > rows["eval"]["online_usd"]  # a dearer core


def test_the_demos_rl_next_is_priced_at_the_next_cores_price_with_its_own_core_alone_baseline():
    from exectune_jax.demo.recipe import prepare

    cfg = prepare(load_config(None, SIZES), None, quick=True)
    stage_cfgs = estimate.rl_stage_configs(cfg, demo=True)
    assert list(stage_cfgs) == ["advisor_rl", "rl", "rl_next"]
    cores = estimate.rl_cores(cfg, stage_cfgs)
    assert cores == {"rl_next": "core_next"}
    stages = tuple((name, c.rl.preset) for name, c in stage_cfgs.items())
    lines = estimate.project(cfg, None, rl_stages=stages, rl_cores=cores, repeat=0.0)
    trained = {ln.stage: ln for ln in lines if ln.endpoint.startswith("core") and ln.stage in ("rl", "rl_next")}
    assert trained["rl"].model == "sim-core" and trained["rl_next"].model == "sim-core-next"
    assert trained["rl_next"].calls == trained["rl"].calls
    alone = {ln.stage: ln for ln in lines if ln.stage.startswith("core_only")}
    assert {s: ln.model for s, ln in alone.items()} == {"core_only": "sim-core",
                                                          "core_only.core_next": "sim-core-next"}
    assert alone["core_only.core_next"].replayed == 0.0  # sampling never called the next core
    usd = {s: cost.line_usd(load_prices(), ln, batch=False, caching=False) for s, ln in trained.items()}
    # the same calls at sim-core-next's dearer price (1.00 / 5.00 against 0.80 / 4.00 per M)
    assert usd["rl_next"] == pytest.approx(1.25 * usd["rl"], rel=1e-6)
    assert estimate.rl_cores(prepare(load_config(None, [*SIZES, "api.core_next=null"]), None, quick=True),
                             estimate.rl_stage_configs(cfg, demo=True)) == {}


def test_trained_guides_repeat_requests_the_cache_replays_and_advice_does_not():
    cfg = load_config(None, SIZES)
    lines = estimate.project(cfg, None, rl_stages=(("advisor_rl", "advisor"), ("rl", "exectune")),
                             repeat=0.3)
    replayed = {(ln.stage, ln.endpoint, ln.replayed) for ln in lines if ln.stage.endswith("rl")}
    assert replayed == {("advisor_rl", "core", 0.0), ("advisor_rl", "judge", 0.0),
                        ("rl", "core", 0.3), ("rl", "judge", 0.3)}
    # eval: the first trained guide's strategies all paid, the other two repeat it in part; the
    # base guide, the advisor and the core-alone rows never repeat
    n = cfg.eval.n_problems
    core = sorted((ln.calls / n, ln.replayed) for ln in lines if ln.stage == "eval" and ln.endpoint == "core")
    assert core == [(1, 0.0), (1, 0.0), (2, 0.0), (2, 0.3)]  # core_only, first, base + advisor, later
    rows = {r["stage"]: r for r in cost.stage_table(load_prices(), lines)}
    assert rows["rl"]["replayed_calls"] == pytest.approx(0.3 * rows["rl"]["calls"])
    assert rows["eval"]["replayed_calls"] == pytest.approx(0.3 * 2 * n * 2)  # core and judge calls
    upper = {r["stage"]: r for r in cost.stage_table(load_prices(), estimate.project(
        cfg, None, rl_stages=(("advisor_rl", "advisor"), ("rl", "exectune")), repeat=0.0))}
    # whole tokens are priced, so the paid share holds to the token
    assert rows["rl"]["online_usd"] == pytest.approx(0.7 * upper["rl"]["online_usd"], rel=1e-3)
    assert rows["advisor_rl"]["online_usd"] == pytest.approx(upper["advisor_rl"]["online_usd"])


def test_a_repeat_share_outside_0_to_1_is_one_line(tmp_path, capsys):
    assert main(["estimate", "--repeat", "1.5", f"run_dir={tmp_path}", *SIZES]) == 2
    err = capsys.readouterr().err
    assert "--repeat 1.5: a share of calls" in err and "Traceback" not in err
    assert not (tmp_path / "ledger.jsonl").exists()  # refused before the pilot paid anything


# ---------------------------------------------------------------------------------------------
# What the call cache replays: RL's core-alone baseline, and a trained guide's repeats


def test_rl_core_alone_calls_replay_the_ones_acceptance_sampling_sent_as_projected(tmp_path):
    """With sample.max_cost_vs_core set, sampling sent the core alone once per problem (sample
    index 0), which is RL's first core-alone sample: RL's baseline pays the other indices."""
    args = [f"run_dir={tmp_path}", *SIZES, "sample.max_cost_vs_core=1.0"]
    assert main(["sample", *args]) == 0
    cfg = load_config(None, args)
    task = tasks.get("arith", n_train=16, n_validation=2, n_test=8)
    drawn = forecast.rl_draws(cfg, task.problems("train"), cfg.rl.steps)
    spec = rewards.make_spec("exectune")
    # RL's labelling, malformed texts: the baseline alone
    with serving(cfg) as served, open_pool(served, cfg.run_dir) as pool:
        ctx = LabelContext(pool=pool, task=task, spec=spec, stage="rl", price=lambda i, o: 0.0,
                           core_alone=rewards.CoreAloneCache(tmp_path / "rl" / "core_alone.json"),
                           core_alone_samples=cfg.rl.core_only_samples)
        for i, batch in enumerate(drawn):
            label_rollout(ctx, Rollout(i, 0, batch, 1, [[]] * len(batch), [[]] * len(batch),
                                       [np.zeros(0)] * len(batch), ["no strategy"] * len(batch)))
    rows = [json.loads(line) for line in (tmp_path / "ledger.jsonl").read_text().splitlines()]
    paid = sum(r["stage"] == "core_only" and not r["cached"] for r in rows)
    # a run_dir whose sampling finished is measured by that stage's own rows, over all its problems
    measured = forecast.measured_pilot(cfg)
    teacher = sum(r["stage"] == "sample.teacher" and not r["cached"] for r in rows)
    assert measured.problems == 16 and measured.per_problem["teacher.calls"] * 16 == pytest.approx(teacher)
    [line] = [ln for ln in estimate.project(cfg, None) if ln.stage == "core_only"]
    distinct = len({p.id for batch in drawn for p in batch})
    assert line.calls == distinct * cfg.rl.core_only_samples == 16
    assert line.calls * (1 - line.replayed) == pytest.approx(paid) and paid == 12
    # without the cost check sampling never runs the core alone: every baseline call is paid
    [unchecked] = [ln for ln in estimate.project(load_config(None, SIZES), None) if ln.stage == "core_only"]
    assert unchecked.replayed == 0.0 and unchecked.calls == 16


@pytest.fixture(scope="module")
def tiny_guide(tmp_path_factory):
    from exectune_jax.sim.guide import BaseGuideSpec, build_base_guide

    out = tmp_path_factory.mktemp("guide") / "guide"
    spec = BaseGuideSpec(vocab_size=400, hidden_size=64, intermediate_size=128, num_layers=2,
                         num_heads=4, num_kv_heads=2, warmup_steps=2, warmup_batch_size=4)
    build_base_guide(tasks.get("arith", n_train=16, n_validation=2, n_test=8).problems("train"), spec, 0, out)
    return out


def test_the_guide_pilot_draws_the_requests_rl_sends_and_rl_tells_it_before_paying(
        tmp_path, tiny_guide, capsys):
    cfg = load_config(None, [f"run_dir={tmp_path}", *SIZES, f"rl.init={tiny_guide}", "rl.preset=advisor",
                             "rl.group_size=4", "rl.max_new_tokens=16", "rl.micro_batch=4",
                             "model.max_seq_len=256", "mesh.fsdp=1"])
    before = estimate.start_guide_pilot(cfg, 2)  # an empty cache: only its own repeats replay
    with serving(cfg) as served:
        grpo.train(served)
    assert "rl: forecast before its first paid call" in capsys.readouterr().out
    rows = [json.loads(line) for line in (tmp_path / "ledger.jsonl").read_text().splitlines()]
    # both batches are sampled before RL's first update (staleness 1): the pilot saw RL's requests
    assert sum(r["stage"] == "rl" and not r["cached"] for r in rows) == before.executed - before.replayed
    after = estimate.start_guide_pilot(cfg, 2)
    assert after.executed == before.executed == 16 and after.replayed == 16  # every one now cached
