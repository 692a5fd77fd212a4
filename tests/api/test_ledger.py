"""Ledger: prices, per-stage totals, replays counted apart, whole lines only, totals across reopen."""

from __future__ import annotations

import json

import pytest

from exectune_jax.api.ledger import (DEFAULT_PRICES, Ledger, Price, PriceError, PriceTable, cost_usd,
                                     load_prices)
from exectune_jax.errors import UserError

TABLE = PriceTable("2026-11-28", {"m": Price(1.0, 10.0), "m-big": Price(5.0, 50.0)})


def test_cost_is_tokens_times_price_per_million():
    assert cost_usd(Price(0.8, 4.0), 1_000_000, 0) == pytest.approx(0.8)
    assert cost_usd(Price(0.8, 4.0), 1000, 500) == pytest.approx(0.0008 + 0.002)


def test_model_names_match_their_longest_price_entry():
    assert TABLE.price("m") == Price(1.0, 10.0)
    assert TABLE.price("m-2024-10-22") == Price(1.0, 10.0)
    assert TABLE.price("m-big-latest") == Price(5.0, 50.0)
    with pytest.raises(PriceError, match="no price for model 'mm'"):
        TABLE.price("mm")


def test_packaged_price_table_is_dated_and_prices_the_sim_like_the_models_it_stands_in_for():
    table = load_prices()
    assert table.read_on == "2026-11-28"
    assert table.price("sim-core") == table.price("claude-3-5-haiku-20241022")
    assert table.price("sim-teacher") == table.price("claude-sonnet-4-5") == table.price("sim-core-strong")
    assert table.price("gpt-4o-mini").input_per_mtok > 0
    assert DEFAULT_PRICES.exists()


def test_a_price_table_without_numbers_names_the_file_and_the_model(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("read_on: 2026-01-01\nmodels:\n  x: {input_per_mtok: cheap}\n")
    with pytest.raises(PriceError, match=r"p.yaml: models.x needs numeric"):
        load_prices(bad)


def test_totals_split_paid_calls_from_replays_per_stage(tmp_path):
    with Ledger(tmp_path / "ledger.jsonl", TABLE) as ledger:
        assert ledger.record("sample", "m", 1000, 100, cached=False) == pytest.approx(0.002)
        ledger.record("sample", "m", 1000, 100, cached=True)
        ledger.record("eval", "m-big", 0, 1000, cached=False)
        totals = ledger.totals()
    assert totals["sample"] == {"calls": 1, "cached_calls": 1, "input_tokens": 1000,
                                "output_tokens": 100, "usd": pytest.approx(0.002),
                                "replayed_usd": pytest.approx(0.002), "cache_read_tokens": 0,
                                "cache_write_tokens": 0, "batch_calls": 0}
    assert totals["eval"]["usd"] == pytest.approx(0.05)
    summary = json.loads((tmp_path / "ledger_totals.json").read_text())
    assert summary["prices_read_on"] == "2026-11-28"
    assert summary["usd"] == pytest.approx(0.052)


def test_reopening_a_ledger_continues_its_totals(tmp_path):
    with Ledger(tmp_path / "l.jsonl", TABLE) as ledger:
        ledger.record("rl", "m", 10, 10, cached=False)
    with Ledger(tmp_path / "l.jsonl", TABLE) as ledger:
        ledger.record("rl", "m", 10, 10, cached=False)
        assert ledger.totals()["rl"]["calls"] == 2
        assert ledger.spent_usd() == pytest.approx(2 * 110e-6)


def test_a_torn_last_line_from_a_crash_is_dropped_and_later_lines_stay_whole(tmp_path):
    path = tmp_path / "l.jsonl"
    with Ledger(path, TABLE) as ledger:
        ledger.record("rl", "m", 10, 10, cached=False)
    with open(path, "ab") as f:
        f.write(b'{"time": 1, "stage": "rl", "mod')
    with Ledger(path, TABLE) as ledger:
        assert ledger.totals()["rl"]["calls"] == 1
        ledger.record("rl", "m", 10, 10, cached=False)
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["stage"] == "rl" for line in lines)


def test_a_corrupt_line_in_the_middle_names_the_file_and_line(tmp_path):
    path = tmp_path / "l.jsonl"
    path.write_text('{"stage": "rl"}\nnot json\n')
    with pytest.raises(UserError, match=r"l.jsonl:1"):
        Ledger(path, TABLE)


def test_concurrent_records_are_all_kept_as_whole_lines(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "l.jsonl"
    with Ledger(path, TABLE) as ledger, ThreadPoolExecutor(8) as ex:
        list(ex.map(lambda i: ledger.record(f"s{i % 3}", "m", i, 1, cached=i % 2 == 0), range(600)))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 600
    assert sum(r["input_tokens"] for r in rows if not r["cached"]) == sum(range(1, 600, 2))
