"""A simple deterministic tokenizer: the simulated APIs' usage fields and the cost projection's
prompt lengths.

Real providers bill by their own tokenizers; the sim only needs counts that are stable,
monotone in text length and cheap, so ledgers and budgets behave like the real thing. The cost
projection (cost.py) counts real prompts with it and scales them by what a provider counted.
A token is a run of word characters or one other non-space character. Plain standard library,
it sits below both of its readers: the simulator and the projection the training stages use.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"\w+|[^\w\s]")
MESSAGE_OVERHEAD = 3  # tokens a chat template adds per message (role marker, separators)


def count(text: str) -> int:
    """Number of tokens in `text`."""
    return sum(1 for _ in _TOKEN.finditer(text))


def truncate(text: str, max_tokens: int) -> str:
    """The longest prefix of `text` holding at most `max_tokens` tokens."""
    if max_tokens <= 0:
        return ""
    for i, m in enumerate(_TOKEN.finditer(text)):
        if i + 1 == max_tokens:
            return text[: m.end()]
    return text


def count_messages(messages: list[dict]) -> int:
    """Prompt tokens of a chat: each message's content plus a fixed per-message overhead."""
    return sum(count(m["content"]) + MESSAGE_OVERHEAD for m in messages)
