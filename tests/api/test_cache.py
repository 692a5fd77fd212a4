"""Call cache: keys separate exactly what changes an answer; entries persist; many threads write safely."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from exectune_jax.api.cache import Cache, cache_key
from exectune_jax.api.providers import Completion

MSGS = [{"role": "user", "content": "2+2?"}]
BASE = dict(max_tokens=16, temperature=0.0, sample_index=0)


def test_key_changes_with_each_answer_determining_input():
    k = cache_key("openai", "m", MSGS, **BASE)
    assert k == cache_key("openai", "m", [dict(m) for m in MSGS], **BASE)
    variants = [
        cache_key("anthropic", "m", MSGS, **BASE),
        cache_key("openai", "m2", MSGS, **BASE),
        cache_key("openai", "m", [{"role": "user", "content": "2+3?"}], **BASE),
        cache_key("openai", "m", [{"role": "system", "content": "2+2?"}], **BASE),
        cache_key("openai", "m", MSGS, **{**BASE, "max_tokens": 17}),
        cache_key("openai", "m", MSGS, **{**BASE, "temperature": 0.5}),
        cache_key("openai", "m", MSGS, **{**BASE, "sample_index": 1}),
    ]
    assert len({k, *variants}) == 8


def test_entries_survive_reopening(tmp_path):
    done = Completion("4", "stop", 5, 1)
    with Cache(tmp_path / "c.sqlite") as cache:
        cache.put("k", "m", done)
    with Cache(tmp_path / "c.sqlite") as cache:
        assert cache.get("k") == done
        assert cache.get("other") is None
        assert len(cache) == 1


def test_many_threads_write_and_read_without_loss(tmp_path):
    with Cache(tmp_path / "c.sqlite") as cache, ThreadPoolExecutor(16) as ex:
        list(ex.map(lambda i: cache.put(f"k{i}", "m", Completion(str(i), "stop", i, 1)), range(500)))
        got = list(ex.map(lambda i: cache.get(f"k{i}"), range(500)))
        assert [c.text for c in got] == [str(i) for i in range(500)]
        assert len(cache) == 500
