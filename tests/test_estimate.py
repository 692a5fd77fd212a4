"""`exectune estimate`: the pricing of projected lines, the pilot's scaling, the budget warning, and
that the run replays the pilot instead of paying for it again."""

import json

import pytest

from exectune_jax import estimate
from exectune_jax.api.ledger import load_prices
from exectune_jax.cli import main
from exectune_jax.config import load_config

SIZES = ["task.options={n_train: 16, n_validation: 2, n_test: 8}", "sample.n_problems=16",
         "sample.proposals=2", "rl.steps=2", "rl.prompts_per_step=2", "rl.group_size=2", "rl.held_out=0",
         "eval.n_problems=8", "metrics.progress=false"]


def test_a_line_is_priced_online_batch_and_with_the_cached_prefix():
    prices = load_prices()
    line = estimate.Line("eval", "core", "claude-3-5-haiku", "anthropic", calls=10, input_tokens=1000,
                         output_tokens=500, prefix_tokens=40, batchable=True)
    online = (1000 * 0.8 + 500 * 4.0) / 1e6
    assert estimate.line_usd(prices, line, batch=False, caching=False) == pytest.approx(online)
    assert estimate.line_usd(prices, line, batch=True, caching=False) == pytest.approx(online / 2)
    # one write of the 40-token prefix at 1.25x, nine reads at 0.1x, the rest plain
    cached = ((1000 - 40 - 360) * 0.8 + 40 * 0.8 * 1.25 + 360 * 0.8 * 0.1 + 500 * 4.0) / 1e6
    assert estimate.line_usd(prices, line, batch=False, caching=True) == pytest.approx(cached)
    rl = estimate.Line("rl", "core", "claude-3-5-haiku", "anthropic", 10, 1000, 500, 40, batchable=False)
    assert estimate.line_usd(prices, rl, batch=True, caching=False) == pytest.approx(online)
    # replays are free: 4 of the 10 calls repeat an earlier request; the 6 paid ones read the
    # prefix from the cache 5 times after one write
    half = estimate.Line("rl", "core", "claude-3-5-haiku", "anthropic", 10, 1000, 500, 40,
                         batchable=False, replayed=0.4)
    assert estimate.line_usd(prices, half, batch=False, caching=False) == pytest.approx(online * 0.6)
    cached = ((600 - 40 - 200) * 0.8 + 40 * 0.8 * 1.25 + 200 * 0.8 * 0.1 + 300 * 4.0) / 1e6
    assert estimate.line_usd(prices, half, batch=False, caching=True) == pytest.approx(cached)


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
    assert estimate.run_pilot(cfg, 4) == estimate.Pilot(**pilot)  # kept, not re-measured from replays
    assert estimate.run_pilot(cfg, 6) is None  # the cache would hide the pilot's work: stated defaults
    assert "no pilot:" in capsys.readouterr().out


def test_judge_calls_read_the_projected_reply_and_advice_is_projected_as_the_core_alone():
    cfg = load_config(None, SIZES)
    pilot = estimate.Pilot(problems=4, per_problem={}, core_output=50.0, teacher_output=40.0,
                           strategy=estimate.DEFAULT_STRATEGY, scale=1.0, alone_output=200.0, judge_output=10.0)
    lines = estimate.project(cfg, pilot, rl_stages=(("advisor_rl", "advisor"), ("rl", "exectune")))
    per_call = {(ln.stage, ln.endpoint, ln.output_tokens / ln.calls) for ln in lines if ln.calls}
    assert ("advisor_rl", "core", 200.0) in per_call and ("rl", "core", 50.0) in per_call
    assert {ln.endpoint for ln in lines if ln.stage == "core_only"} == {"core"}  # nothing to judge
    judge = {ln.stage: ln for ln in lines if ln.endpoint == "judge" and ln.stage.endswith("rl")}
    assert {ln.output_tokens / ln.calls for ln in judge.values()} == {10.0}
    # the same prompts and strategy: the advisor's judge reads a reply 150 tokens longer
    gap = judge["advisor_rl"].input_tokens / judge["advisor_rl"].calls - judge["rl"].input_tokens / judge["rl"].calls
    assert gap == pytest.approx(150.0)
    # eval: the base guide's and the advisor's core calls at the core-alone length, trained guides'
    # at the executed-strategy length; core_only and core_strong unjudged
    evals = [ln for ln in lines if ln.stage == "eval"]
    n = cfg.eval.n_problems
    core = sorted((ln.output_tokens / ln.calls, ln.calls / n) for ln in evals if ln.endpoint == "core")
    # 3 trained guides (the first, then the two that repeat it in part); core_only; base + advisor
    assert core == [(50.0, 1), (50.0, 2), (200.0, 1), (200.0, 2)]
    assert sum(ln.calls for ln in evals if ln.endpoint == "judge") == n * len(cfg.eval.guides)


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
    rows = {r["stage"]: r for r in estimate.stage_table(load_prices(), lines)}
    assert rows["rl"]["replayed_calls"] == pytest.approx(0.3 * rows["rl"]["calls"])
    assert rows["eval"]["replayed_calls"] == pytest.approx(0.3 * 2 * n * 2)  # core and judge calls
    upper = {r["stage"]: r for r in estimate.stage_table(load_prices(), estimate.project(
        cfg, None, rl_stages=(("advisor_rl", "advisor"), ("rl", "exectune")), repeat=0.0))}
    # whole tokens are priced, so the paid share holds to the token
    assert rows["rl"]["online_usd"] == pytest.approx(0.7 * upper["rl"]["online_usd"], rel=1e-3)
    assert rows["advisor_rl"]["online_usd"] == pytest.approx(upper["advisor_rl"]["online_usd"])


def test_a_repeat_share_outside_0_to_1_is_one_line(tmp_path, capsys):
    assert main(["estimate", "--repeat", "1.5", f"run_dir={tmp_path}", *SIZES]) == 2
    err = capsys.readouterr().err
    assert "--repeat 1.5: a share of calls" in err and "Traceback" not in err
    assert not (tmp_path / "ledger.jsonl").exists()  # refused before the pilot paid anything
