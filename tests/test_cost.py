"""cost.py: the price of projected lines (online, batch, the cached prefix, free replays) and a
pilot's measurement from the ledger rows of acceptance sampling."""

import pytest

from exectune_jax import cost
from exectune_jax.api.ledger import load_prices
from exectune_jax.config import load_config
from exectune_jax.data import tasks

SIZES = ["task.options={n_train: 16, n_validation: 2, n_test: 8}", "sample.n_problems=16",
         "sample.proposals=2", "rl.steps=2", "rl.prompts_per_step=2", "rl.group_size=2", "rl.held_out=0",
         "eval.n_problems=8", "metrics.progress=false"]


def test_a_line_is_priced_online_batch_and_with_the_cached_prefix():
    prices = load_prices()
    line = cost.Line("eval", "core", "claude-3-5-haiku", "anthropic", calls=10, input_tokens=1000,
                         output_tokens=500, prefix_tokens=40, batchable=True)
    online = (1000 * 0.8 + 500 * 4.0) / 1e6
    assert cost.line_usd(prices, line, batch=False, caching=False) == pytest.approx(online)
    assert cost.line_usd(prices, line, batch=True, caching=False) == pytest.approx(online / 2)
    # one write of the 40-token prefix at 1.25x, nine reads at 0.1x, the rest plain
    cached = ((1000 - 40 - 360) * 0.8 + 40 * 0.8 * 1.25 + 360 * 0.8 * 0.1 + 500 * 4.0) / 1e6
    assert cost.line_usd(prices, line, batch=False, caching=True) == pytest.approx(cached)
    rl = cost.Line("rl", "core", "claude-3-5-haiku", "anthropic", 10, 1000, 500, 40, batchable=False)
    assert cost.line_usd(prices, rl, batch=True, caching=False) == pytest.approx(online)
    # replays are free: 4 of the 10 calls repeat an earlier request; the 6 paid ones read the
    # prefix from the cache 5 times after one write
    half = cost.Line("rl", "core", "claude-3-5-haiku", "anthropic", 10, 1000, 500, 40,
                         batchable=False, replayed=0.4)
    assert cost.line_usd(prices, half, batch=False, caching=False) == pytest.approx(online * 0.6)
    cached = ((600 - 40 - 200) * 0.8 + 40 * 0.8 * 1.25 + 200 * 0.8 * 0.1 + 300 * 4.0) / 1e6
    assert cost.line_usd(prices, half, batch=False, caching=True) == pytest.approx(cached)


def test_the_pilot_measures_guided_replies_apart_from_the_core_alone():
    cfg = load_config(None, [*SIZES, "sample.max_cost_vs_core=1.0"])
    task = tasks.get("arith", n_train=16, n_validation=2, n_test=8)

    def row(stage, out, cached=False):
        return {"stage": stage, "input_tokens": 100, "output_tokens": out, "cached": cached}

    rows = [row("sample.core_alone", 200), row("sample.teacher", 40), row("sample.core", 50),
            row("sample.core.judge", 10), row("sample.core", 70, cached=True),
            row("core_only", 200, cached=True)]
    pilot = cost.pilot_from_rows(cfg, task.family, task.problems("train")[:2], rows, None)
    assert (pilot.core_output, pilot.alone_output, pilot.judge_output) == (50.0, 200.0, 10.0)
    # paid per problem: the core-alone call is sampling's spend too; replays are not paid
    assert pilot.per_problem["core.calls"] == 1.0 and pilot.per_problem["core.output"] == 125.0
