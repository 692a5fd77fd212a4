"""Prompt caching, priced: both providers' usage formats, the cache rates of the packaged price
table, and the sim's cached-prefix usage through the real client and the pool."""

from __future__ import annotations

import pytest
from loopback import endpoint, make_pool

from exectune_jax import tokens
from exectune_jax.api import providers
from exectune_jax.api.ledger import Ledger, load_prices
from exectune_jax.api.pool import Request

SYSTEM = "Solve the problem and finish with the line: The answer is N."


def _anthropic_reply(plain: int, write: int, read: int, out: int) -> dict:
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-3-5-haiku-20241022",
            "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": plain, "output_tokens": out,
                      "cache_creation_input_tokens": write, "cache_read_input_tokens": read}}


def _openai_reply(prompt: int, cached: int, out: int) -> dict:
    return {"id": "c", "object": "chat.completion", "created": 0, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out,
                      "prompt_tokens_details": {"cached_tokens": cached}}}


def test_anthropic_usage_prices_writes_at_1_25x_and_reads_at_0_1x_of_input(tmp_path):
    write = providers.parse_anthropic(_anthropic_reply(plain=200, write=2000, read=0, out=100))
    read = providers.parse_anthropic(_anthropic_reply(plain=200, write=0, read=2000, out=100))
    assert (write.input_tokens, write.cache_write_tokens, write.cache_read_tokens) == (2200, 2000, 0)
    assert (read.input_tokens, read.cache_write_tokens, read.cache_read_tokens) == (2200, 0, 2000)
    with Ledger(tmp_path / "ledger.jsonl") as ledger:  # claude-3-5-haiku: $0.80 in, $4.00 out
        for c in (write, read):
            ledger.record("sample", "claude-3-5-haiku-20241022", c.input_tokens, c.output_tokens,
                          cached=False, provider="anthropic", cache_read=c.cache_read_tokens,
                          cache_write=c.cache_write_tokens)
        totals = ledger.totals()["sample"]
    # write: 200*0.8 + 2000*0.8*1.25 + 100*4 = 160 + 2000 + 400 = 2560 micro-USD
    # read:  200*0.8 + 2000*0.8*0.10 + 100*4 = 160 + 160 + 400 = 720 micro-USD
    assert totals["usd"] == pytest.approx((2560 + 720) / 1e6)
    assert (totals["input_tokens"], totals["cache_write_tokens"], totals["cache_read_tokens"]) == (4400, 2000, 2000)


def test_openai_usage_prices_cached_tokens_at_the_models_cached_input_price(tmp_path):
    c = providers.parse_openai(_openai_reply(prompt=3000, cached=2048, out=500))
    assert (c.input_tokens, c.cache_read_tokens, c.cache_write_tokens) == (3000, 2048, 0)
    prices = load_prices()
    # gpt-4o-mini: $0.15 in, $0.075 cached in, $0.60 out: 952*0.15 + 2048*0.075 + 500*0.6
    expected = (952 * 0.15 + 2048 * 0.075 + 500 * 0.60) / 1e6
    assert prices.charge("gpt-4o-mini", "openai", 3000, 500, cache_read=2048) == pytest.approx(expected)
    # a model without its own cached price falls back to the provider's 0.5x multiplier
    assert prices.charge("sim-core", "openai", 3000, 500, cache_read=2048) == pytest.approx(
        (952 * 0.8 + 2048 * 0.4 + 500 * 4.0) / 1e6)
    assert prices.charge("gpt-4o-mini", "openai", 3000, 500, cache_read=2048, batch=True) == pytest.approx(
        expected / 2)


def test_cached_tokens_above_the_prompt_are_a_malformed_body():
    with pytest.raises(providers.ApiError, match="malformed"):
        providers.parse_openai(_openai_reply(prompt=10, cached=11, out=1))


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_sim_reports_the_shared_system_prefix_as_cached_and_the_ledger_prices_it(
        sim_server, tmp_path, provider):
    server = sim_server()
    reqs = [Request("core", [("system", SYSTEM), ("user", f"question {i}")], stage="eval") for i in range(5)]
    with make_pool(tmp_path, {"core": endpoint(server, provider, model="sim-core")}, concurrency=1) as pool:
        results = pool.map(reqs)
        totals = pool.ledger.totals()["eval"]
    assert all(r.ok for r in results)
    prefix = tokens.count(SYSTEM) + tokens.MESSAGE_OVERHEAD
    assert totals["cache_read_tokens"] == 4 * prefix  # the first call finds nothing cached
    assert totals["cache_write_tokens"] == (prefix if provider == "anthropic" else 0)
    inputs, outputs = totals["input_tokens"], totals["output_tokens"]
    assert inputs == sum(tokens.count_messages([{"role": "system", "content": SYSTEM},
                                                {"role": "user", "content": f"question {i}"}])
                         for i in range(5))
    write_rate, read_rate = (1.25, 0.10) if provider == "anthropic" else (1.0, 0.5)
    plain = inputs - totals["cache_read_tokens"] - totals["cache_write_tokens"]
    expected = (plain * 0.8 + totals["cache_write_tokens"] * 0.8 * write_rate
                + totals["cache_read_tokens"] * 0.8 * read_rate + outputs * 4.0) / 1e6
    assert totals["usd"] == pytest.approx(expected)
    assert totals["usd"] < load_prices().usd("sim-core", inputs, outputs)
