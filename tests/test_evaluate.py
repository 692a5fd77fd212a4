"""Evaluation: the statistics by hand, and the whole table on a tiny real guide and the sim core."""

import json
import math

import jax
import pytest
from flax import nnx

from exectune_jax import evaluate
from exectune_jax.config import load_config
from exectune_jax.data import tasks
from exectune_jax.gcop.execute import Outcome
from exectune_jax.gcop.follow import FollowCheck
from exectune_jax.models import hf
from exectune_jax.models.transformer import Transformer
from exectune_jax.sim import guide as sim_guide
from exectune_jax.sim import serving
from exectune_jax.world import WORLD


def outcome(correct, tokens=(10, 5), followed=None, judge_usd=0.0):
    checks = (FollowCheck("judge", followed, "", 30, 4, judge_usd),) if followed else ()
    return Outcome(correct, None, "", *tokens, 0.0, None if correct is not None else "timeout",
                   False, followed=followed, checks=checks)


# --------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("b, c, expected", [
    (0, 0, 1.0),
    (5, 0, 2 / 32),  # 2 * P(X <= 0), X ~ Binom(5, 1/2)
    (10, 2, 2 * (1 + 12 + 66) / 4096),  # 2 * P(X <= 2), X ~ Binom(12, 1/2)
    (2, 10, 2 * (1 + 12 + 66) / 4096),  # symmetric in b and c
    (4, 4, 1.0),  # 2 * P(X <= 4) > 1 is capped
    (3, 4, 1.0),
])
def test_mcnemar_exact_matches_the_binomial_tail_by_hand(b, c, expected):
    assert evaluate.mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_exact_stays_finite_and_tiny_for_large_one_sided_counts():
    p = evaluate.mcnemar_exact(2000, 0)
    assert 0.0 <= p < 1e-300 or p == 0.0
    assert math.isfinite(evaluate.mcnemar_exact(1500, 1400))


def test_discordant_counts_only_problems_scored_in_both_rows():
    ref = {"a": True, "b": True, "c": False, "d": False, "e": True}
    other = {"a": False, "b": True, "c": True, "d": False}  # "e" failed in the other row
    assert evaluate.discordant(ref, other) == (1, 1)


def test_row_summary_excludes_and_counts_failed_calls_and_uses_wilson_intervals():
    task = tasks.get("arith", n_train=0, n_validation=0, n_test=4)
    problems = task.problems("test")
    good = "<strategy>\n1. Add 1 to 2.\n</strategy>"
    leaking = f"<strategy>\n1. The answer is {problems[3].answer}.\n</strategy>"
    data = evaluate.RowData(
        method="base_guide", problems=problems, texts=[good, good, "no tags here", leaking],
        outcomes=[[outcome(True, followed="yes", judge_usd=1e-5)], [outcome(False, followed="no", judge_usd=1e-5)],
                  [outcome(None, (0, 0))], [outcome(True, followed="yes", judge_usd=1e-5)]],
        guide_tokens=17, family="math")
    ref = {problems[0].id: False, problems[1].id: True, problems[3].id: True}
    row = evaluate.row_summary(data, ref)
    assert set(row) == set(evaluate.ROW_FIELDS)
    assert row["n"] == 3 and row["failed_calls"] == 1
    assert row["accuracy"] == pytest.approx(2 / 3)
    # Wilson 95% for 2/3, computed by hand: centre (p + z^2/2n)/(1 + z^2/n), half-width likewise
    z = 1.96
    centre = (2 / 3 + z * z / 6) / (1 + z * z / 3)
    half = z * math.sqrt((2 / 3) * (1 / 3) / 3 + z * z / 36) / (1 + z * z / 3)
    assert row["accuracy_ci"] == pytest.approx([centre - half, centre + half])
    assert row["executability"] == pytest.approx(2 / 3)  # followed 2 of 3, not "right 2 of 3"
    assert (row["p_correct_followed"], row["p_correct_not_followed"]) == (1.0, 0.0)
    assert row["mixture_accuracy"] == pytest.approx(2 / 3) and row["follow_unknown"] == 0
    assert row["follow_usd_per_problem"] == pytest.approx(1e-5)
    assert row["format_valid"] == pytest.approx(3 / 4)
    assert row["leak_rate"] == pytest.approx(1 / 4)
    assert row["core_input_tokens"] == 30 and row["core_output_tokens"] == 15
    # discordant vs the reference: problem 0 (row right, ref wrong) and problem 1 (ref right)
    assert row["mcnemar_p_vs_exectune"] == pytest.approx(evaluate.mcnemar_exact(1, 1))


def test_executability_differs_from_accuracy_when_the_core_ignores_strategies():
    problems = tasks.get("arith", n_train=0, n_validation=0, n_test=4).problems("test")
    # every answer right, but the core followed only one strategy of four
    outcomes = [[outcome(True, followed=f)] for f in ("yes", "no", "no", "no")]
    row = evaluate.row_summary(evaluate.RowData("sft_unfiltered", problems, ["x"] * 4, outcomes, 0, "math"), None)
    assert row["accuracy"] == 1.0 and row["executability"] == 0.25
    assert row["p_correct_followed"] == row["p_correct_not_followed"] == 1.0


def test_undecided_follow_checks_are_left_out_of_the_mixture_and_counted():
    problems = tasks.get("arith", n_train=0, n_validation=0, n_test=3).problems("test")
    outcomes = [[outcome(True, followed="yes")], [outcome(False, followed="unknown")], [outcome(False, followed="no")]]
    row = evaluate.row_summary(evaluate.RowData("exectune", problems, ["x"] * 3, outcomes, 0, "math"), None)
    assert row["follow_unknown"] == 1 and row["executability"] == 0.5 and row["mixture_accuracy"] == 0.5
    assert row["accuracy"] == pytest.approx(1 / 3)  # pass@1 still counts every scored execution
    assert "1 undecided left out" in evaluate.table([row])


def test_core_alone_rows_report_no_guide_metrics():
    problems = tasks.get("arith", n_train=0, n_validation=0, n_test=2).problems("test")
    data = evaluate.RowData("core_only", problems, None, [[outcome(True)], [outcome(False)]], 0,
                            "math")
    row = evaluate.row_summary(data, None)
    assert row["executability"] is None and row["format_valid"] is None
    assert row["mcnemar_p_vs_exectune"] is None


# --------------------------------------------------------------------------- the whole table


@pytest.fixture(scope="module")
def tiny_guide(tmp_path_factory):
    """A random-weight d=64, 2-layer guide with the demo tokenizer: real files, real sampler."""
    out = tmp_path_factory.mktemp("guide")
    problems = tasks.get("arith", n_train=40, n_validation=0, n_test=0).problems("train")
    tokenizer = sim_guide.train_tokenizer(sim_guide.tokenizer_corpus(problems), 512)
    spec = sim_guide.BaseGuideSpec(hidden_size=64, intermediate_size=128, num_layers=2,
                                   num_heads=4, num_kv_heads=2)
    mcfg = sim_guide.guide_model_config(tokenizer, spec)
    with jax.default_device(jax.local_devices()[0]):
        model = Transformer(mcfg, rngs=nnx.Rngs(0))
    hf.save(model, mcfg, out, tokenizer=tokenizer)
    return out


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_guide):
    run_dir = tmp_path_factory.mktemp("run")
    cfg = load_config(None, [
        f"run_dir={run_dir}", "task.options={n_train: 0, n_validation: 0, n_test: 24}",
        "eval.samples=2", "eval.max_new_tokens=16", "eval.batch_size=16", "eval.cores=[core, core_next]",
        f"eval.guides={{exectune: {tiny_guide}, base_guide: {tiny_guide}, "
        f"advisor_rl: {tiny_guide}, sft_unfiltered: missing/guide, exectune_sft: ''}}",
    ])
    with serving(cfg) as served:
        assert evaluate.run(served) == 0
    return run_dir


def test_results_json_has_every_row_field_and_no_paths_or_times(evaluated):
    doc = json.loads((evaluated / "eval" / "results.json").read_text())
    methods = [r["method"] for r in doc["rows"]]
    assert methods == ["core_only", "base_guide", "advisor_rl", "exectune", "core_strong"]
    for row in doc["rows"]:
        assert list(row) == list(evaluate.ROW_FIELDS)
        assert row["n"] + row["failed_calls"] // 2 <= 24
        lo, hi = row["accuracy_ci"]
        assert 0.0 <= lo <= row["accuracy"] <= hi <= 1.0
        assert row["usd_total"] > 0 and row["core_input_tokens"] > 0
        assert row["utility"] == pytest.approx([row["accuracy"] - lam * row["usd_per_problem"]
                                                for lam in doc["utility"]["lambdas"]])
    assert doc["skipped"] == [{"method": "sft_unfiltered", "reason": "no guide at missing/guide"}]
    assert doc["world"] == {"version": WORLD.version, "hash": WORLD.hash, "overrides": {}}
    text = json.dumps(doc)
    assert str(evaluated) not in text and "/tmp" not in text and "time" not in text
    assert doc["follow_check"] == "judge" and doc["judge_model"] == "sim-judge"
    for row in doc["rows"]:
        if row["method"] in ("core_only", "core_strong"):
            assert row["executability"] is None and row["mixture_accuracy"] is None
            continue
        a, pf, pn = row["executability"], row["p_correct_followed"] or 0.0, row["p_correct_not_followed"] or 0.0
        assert row["mixture_accuracy"] == pytest.approx(a * pf + (1 - a) * pn, abs=1e-12)


def test_results_json_records_the_overridden_world_under_its_own_hash():
    cfg = load_config(None, ["sim.world={follow_compound: 0.25, teacher_habit_rate: 0.4}"])
    world = evaluate.results(cfg, {}, [], 0)["world"]
    assert world["overrides"] == {"follow_compound": 0.25, "teacher_habit_rate": 0.4}
    assert world["version"] == WORLD.version and world["hash"] != WORLD.hash


def test_follow_labels_name_every_guided_execution_by_its_digest():
    from exectune_jax.gcop.follow import exchange_digest
    from exectune_jax.gcop.prompts import core_messages

    problems = tasks.get("arith", n_train=0, n_validation=0, n_test=2).problems("test")
    guided = Outcome(True, "3", "", 10, 5, 0.0, None, False, response="Step 1: 1 + 2 = 3.", followed="yes",
                     checks=(FollowCheck("judge", "yes", ""), FollowCheck("trace", "unknown", "")))
    data = evaluate.RowData("exectune", problems, ["<strategy>\n1. Add 2 to 1.\n</strategy>", ""],
                            [[guided], [outcome(True, followed="no")]], 0, "math")
    labels = evaluate.follow_labels([data, evaluate.RowData("core_only", problems, None, [[guided]] * 2, 0, "math")])
    assert labels == [{"method": "exectune", "id": problems[0].id, "sample": 0, "followed": "yes",
                       "digest": exchange_digest(core_messages(problems[0], "math", data.texts[0]), guided.response),
                       "checks": {"judge": "yes", "trace": "unknown"}}]


def test_every_guide_is_executed_by_each_listed_core_with_a_table_each(evaluated):
    doc = json.loads((evaluated / "eval" / "results.json").read_text())
    assert doc["core"] == "core" and doc["core_model"] == "sim-core" and list(doc["cores"]) == ["core_next"]
    other = doc["cores"]["core_next"]
    assert other["model"] == "sim-core-next" and other["reference"] == "exectune"
    assert [r["method"] for r in other["rows"]] == ["core_only", "base_guide", "advisor_rl", "exectune"]
    first = {r["method"]: r for r in doc["rows"]}
    for row in other["rows"]:
        assert list(row) == list(evaluate.ROW_FIELDS) and row["n"] > 0
        # the same strategies, written once: what the guide wrote is the same in both tables
        for key in ("guide_tokens", "format_valid", "leak_rate"):
            assert row[key] == first[row["method"]][key], (row["method"], key)
    assert other["rows"][-1]["mcnemar_p_vs_exectune"] is None and other["rows"][0]["mcnemar_p_vs_exectune"] is not None
    # ... executed by each core under its own model name, each core's calls under its own stages
    ledger = [json.loads(line) for line in (evaluated / "ledger.jsonl").read_text().splitlines()]
    called = {(r["stage"], r["model"]) for r in ledger if r["model"].startswith("sim-core")}
    for method in ("core_only", "base_guide", "advisor_rl", "exectune"):
        assert {(f"eval.{method}", "sim-core"), (f"eval.core_next.{method}", "sim-core-next")} <= called
    assert not any(model == "sim-core-next" and not stage.startswith("eval.core_next.") for stage, model in called)


def test_markdown_table_and_plots_are_written(evaluated):
    md = (evaluated / "eval" / "results.md").read_text().splitlines()
    j_head = md.index("| method | " + " | ".join(f"J at λ={lam:g}" for lam in load_config().eval.lambdas) + " |")
    next_core = md.index("## The guides executed by core_next (sim-core-next)")
    assert md[0].startswith("| method |") and sum(line.startswith("|") for line in md[:j_head]) == 2 + 5
    assert sum(line.startswith("|") for line in md[j_head:next_core]) == 2 + 5  # J for every row
    assert sum(line.startswith("- ") and " = " in line for line in md[:next_core]) == 3  # the guide rows' mixtures
    # the second core: its method table and its J table, four rows each
    assert sum(line.startswith("|") for line in md[next_core:]) == 2 * (2 + 4)
    for name in ("accuracy_vs_cost.png", "accuracy_vs_alpha.png"):
        assert (evaluated / "eval" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rl_curves_plot_logged_runs_and_skip_runs_without_rewards(tmp_path):
    from exectune_jax import plots

    records = [{"step": s, "reward": 0.1 * s, "reward_success": 0.1 * s, "reward_cost": 0.0,
                "executability": 0.5, "executability_lo": 0.4, "executability_hi": 0.6,
                "format_valid": 1.0, "usd_per_strategy": 1e-3} for s in range(1, 4)]
    assert plots.reward_keys(records) == ["reward_success"]  # all-zero terms are left out
    assert plots.rl_curves({"a": [{"step": 1, "loss": 0.3}]}, tmp_path / "none.png") is None
    path = plots.rl_curves({"advisor_rl": records, "exectune": records}, tmp_path / "rl.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_points_crowded_by_a_neighbour_get_no_in_place_label():
    from exectune_jax import plots

    # two methods at nearly the same cost and accuracy, two far from everything
    points = [(0.84, 73.0), (0.99, 72.8), (0.36, 88.6), (3.1, 87.2)]
    assert plots.isolated(points) == [False, False, True, True]
    assert plots.isolated([(1.0, 50.0)]) == [True]
