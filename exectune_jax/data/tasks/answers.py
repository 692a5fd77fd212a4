"""Pull the final number out of a model's reply and compare numbers exactly.

Replies phrase answers many ways ("The answer is $1,200.", "\\boxed{18}", "#### 18",
"18 dollars"). The order of preference mirrors how explicit the marker is: a boxed value,
then an "answer is" phrase, then a GSM8K "####" line, then the last number in the text.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_NUM = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
NUMBER = re.compile(rf"(?<![\w.])(?:{_NUM})(?![\d])")
_BOXED = re.compile(r"\\boxed\s*\{((?:[^{}]|\{[^{}]*\})*)\}")
_ANSWER_IS = re.compile(
    rf"answer\s*(?:is|=|:)\s*(?:[:=]\s*)?[^\d\n-]{{0,24}}?({_NUM})(?![\d])", re.IGNORECASE
)
_HASHES = re.compile(rf"####\s*[^\d\n-]{{0,8}}?({_NUM})")


def normalize_number(text: str) -> str | None:
    """Canonical string of the first number in `text` ("1,200.50" -> "1200.5"), or None."""
    m = NUMBER.search(text.replace("$", " "))
    if m is None:
        return None
    try:
        value = Decimal(m.group(0).replace(",", ""))
    except InvalidOperation:
        return None
    return canonical(value)


def canonical(value: Decimal | int | float) -> str:
    """Integers without a decimal point; other values without trailing zeros or exponent."""
    d = Decimal(str(value)) if not isinstance(value, Decimal) else value
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def extract_answer(text: str) -> str | None:
    """The final numeric answer of a reply, canonicalised, or None when there is no number."""
    for pattern in (_BOXED, _ANSWER_IS, _HASHES):
        matches = pattern.findall(text)
        if matches:
            found = normalize_number(matches[-1])
            if found is not None:
                return found
    numbers = NUMBER.findall(text.replace("$", " "))
    return normalize_number(numbers[-1]) if numbers else None


def numbers_in(text: str) -> list[str]:
    """Every number in `text`, canonicalised, in order of appearance."""
    return [canonical(Decimal(n.replace(",", ""))) for n in NUMBER.findall(text.replace("$", " "))]


def same_number(a: str, b: str) -> bool:
    """Exact numeric equality of two canonical (or canonicalisable) number strings."""
    try:
        return Decimal(a.replace(",", "")) == Decimal(b.replace(",", ""))
    except InvalidOperation:
        return False
