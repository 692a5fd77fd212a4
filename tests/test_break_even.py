"""Break-even arithmetic, training-spend attribution from ledger totals, and the written outputs."""

import json

import pytest

from exectune_jax import break_even as be
from exectune_jax.api.ledger import Ledger
from exectune_jax.config import load_config


def _row(method, usd_per_problem, n=100, guide_tokens=0):
    return {"method": method, "n": n, "usd_per_problem": usd_per_problem, "guide_tokens": guide_tokens}


STAGES = {"sample.teacher": {"usd": 0.30}, "sample.core": {"usd": 0.10}, "sample_unfiltered.teacher": {"usd": 0.05},
          "rl": {"usd": 0.20}, "advisor_rl": {"usd": 0.25}, "core_only": {"usd": 0.02}, "eval.exectune": {"usd": 9.0}}


def test_training_spend_sums_each_guides_own_stages_and_charges_shared_rl_stages_to_each():
    spend = be.training_spend(STAGES, {m: be.lineage(m, "") for m in ("exectune", "advisor_rl", "sft_unfiltered")})
    assert spend["exectune"] == pytest.approx({"sample": 0.40, "rl": 0.20, "core_only": 0.02})
    assert spend["advisor_rl"] == pytest.approx({"advisor_rl": 0.25, "core_only": 0.02})
    assert spend["sft_unfiltered"] == pytest.approx({"sample_unfiltered": 0.05})
    assert be.lineage("my_guide", "my_rl/guide") == ("my_rl",)


def test_problems_to_repay_is_training_over_per_problem_saving_and_never_without_a_saving():
    rows = [_row("core_only", 0.0010), _row("exectune", 0.0006, guide_tokens=5000), _row("core_strong", 0.0040)]
    (e,) = be.break_even(rows, {"exectune": {"sample": 0.4, "rl": 0.2}})
    assert e["training_usd"] == pytest.approx(0.6)
    assert e["problems_to_repay_vs_core_only"] == pytest.approx(0.6 / 0.0004)  # 1,500 problems
    assert e["problems_to_repay_vs_core_strong"] == pytest.approx(0.6 / 0.0034)
    # guide tokens priced: 50 tokens per problem at $2/M adds $0.0001 per problem
    (priced,) = be.break_even(rows, {"exectune": {"rl": 0.6}}, guide_usd_per_mtok=2.0)
    assert priced["usd_per_problem"] == pytest.approx(0.0007)
    assert priced["problems_to_repay_vs_core_only"] == pytest.approx(0.6 / 0.0003)
    (dearer,) = be.break_even([_row("core_only", 0.0005), _row("exectune", 0.0006)], {"exectune": {"rl": 0.1}})
    assert dearer["problems_to_repay_vs_core_only"] is None and dearer["problems_to_repay_vs_core_strong"] is None
    assert "never" in be.table([dearer])


def test_write_leaves_json_a_markdown_table_and_the_plot(tmp_path):
    cfg = load_config(None, [f"run_dir={tmp_path}"])
    # the spend comes from the ledger's lines: each stage's USD as one paid call of 1M output
    # tokens of a model priced at that many USD per million
    prices = tmp_path / "prices.yaml"
    prices.write_text("read_on: 2026-01-01\nmodels:\n" + "".join(
        f"  m{i}: {{input_per_mtok: 0, output_per_mtok: {t['usd']}}}\n" for i, t in enumerate(STAGES.values())))
    with Ledger(tmp_path / "ledger.jsonl", prices) as ledger:
        for i, stage in enumerate(STAGES):
            ledger.record(stage, f"m{i}", 0, 1_000_000, cached=False)
    out = tmp_path / "eval"
    out.mkdir()
    rows = [_row("core_only", 0.0010), _row("exectune", 0.0006), _row("core_strong", 0.0040)]
    written = be.write(cfg, out, {"rows": rows})
    doc = json.loads((out / "break_even.json").read_text())
    assert [e["method"] for e in doc["entries"]] == ["exectune"]
    assert doc["entries"][0]["problems_to_repay_vs_core_only"] == pytest.approx(0.62 / 0.0004)
    assert "| exectune | 0.6200 |" in (out / "break_even.md").read_text()
    assert (out / "cost_vs_problems.png") in written and (out / "cost_vs_problems.png").stat().st_size > 0


def test_each_other_core_gets_its_own_break_even_against_its_own_core_alone(tmp_path):
    cfg = load_config(None, [f"run_dir={tmp_path}", "eval.cores=[core, core_next]",
                             "eval.guides={exectune_next: rl_next/guide}"])
    with Ledger(tmp_path / "ledger.jsonl", None) as ledger:
        ledger.record("rl_next", "sim-core-next", 0, 100_000, cached=False)  # USD 0.50 at 5.00 / M
    out = tmp_path / "eval"
    out.mkdir()
    first = [_row("core_only", 0.0010), _row("exectune_next", 0.0009)]
    # on the next core the adapted guide saves 0.0005 per problem against that core alone
    nxt = [_row("core_only", 0.0015), _row("exectune_next", 0.0010)]
    be.write(cfg, out, {"rows": first, "cores": {"core_next": {"model": "sim-core-next", "rows": nxt}}})
    doc = json.loads((out / "break_even.json").read_text())
    (on_first,) = doc["entries"]
    (on_next,) = doc["cores"]["core_next"]["entries"]
    assert on_first["training_usd"] == on_next["training_usd"] == pytest.approx(0.5)
    assert on_first["problems_to_repay_vs_core_only"] == pytest.approx(0.5 / 0.0001)
    assert on_next["problems_to_repay_vs_core_only"] == pytest.approx(0.5 / 0.0005)
    assert on_next["problems_to_repay_vs_core_strong"] is None  # no strong core in its table
    md = (out / "break_even.md").read_text()
    assert "Executed by core_next (sim-core-next)" in md and md.count("| exectune_next |") == 2
