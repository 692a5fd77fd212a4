"""Pull the final number out of a model's reply and compare numbers exactly.

Replies phrase answers many ways ("The answer is $1,200.", "\\boxed{18}", "#### 18",
"18 dollars"). The order of preference mirrors how explicit the marker is: a boxed value,
then an "answer is" phrase, then a GSM8K "####" line, then the last number in the text.

A real small model (SmolLM2-135M behind llama.cpp, tests/data/real_core_replies.jsonl) states
answers as arithmetic: "The answer is 98 + 40 = 58.", "So, 27 - 9 = 13 is the answer.", "The
answer to this math word problem is: 4". The answer of such a phrase is the value after its
last "=" (58, 13); a phrase whose expression is never evaluated ("the answer is 4 + 2") states
no number, so the reply has no answer (None). The last "answer" phrase of a reply wins.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_NUM = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
NUMBER = re.compile(rf"(?<![\w.])(?:{_NUM})(?![\d])")
_BOXED = re.compile(r"\\boxed\s*\{((?:[^{}]|\{[^{}]*\})*)\}")
_ANSWER_IS = re.compile(
    rf"answer(?:\s+to\s+[^\n.:=]{{0,40}}?)?\s*(?:\bis\b|=|:)\s*(?:[:=]\s*)?[^\d\n-]{{0,24}}?({_NUM})(?![\d])",
    re.IGNORECASE,
)
_IS_THE_ANSWER = re.compile(rf"({_NUM})\s+is\s+(?:the|my|our)\s+(?:final\s+)?answer\b", re.IGNORECASE)
# What may follow a stated number on its line: operators and numbers, "=" and numbers.
_CHAIN = re.compile(rf"(?:[ \t]*(?:[-+*/×÷]|x(?=[ \t]*\$?\d))[ \t]*\$?{_NUM}|[ \t]*[=≈][ \t]*\$?{_NUM})+")
_EQUALS = re.compile(rf"[=≈][ \t]*\$?({_NUM})")
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


def stated_answers(text: str) -> list[str | None]:
    """The values of the reply's "answer" phrases, in order ("the answer is N", "the answer to
    ... is N", "N is the answer"); an arithmetic expression stands for the value after its last
    "=", and one never evaluated is None (the phrase states no number)."""
    found: list[tuple[int, str | None]] = []
    for m in _ANSWER_IS.finditer(text):
        chain = _CHAIN.match(text, m.end(1))
        tail = chain.group(0) if chain else ""
        equals = _EQUALS.findall(tail)
        if equals:
            found.append((m.start(), normalize_number(equals[-1])))
        else:
            found.append((m.start(), None if tail else normalize_number(m.group(1))))
    for m in _IS_THE_ANSWER.finditer(text):
        found.append((m.start(), normalize_number(m.group(1))))
    return [value for _, value in sorted(found, key=lambda f: f[0])]


def states_answer(text: str) -> bool:
    """Whether the reply marks an answer explicitly (boxed, an "answer" phrase with a number, or
    a "####" line), rather than leaving only the last number in the text to stand for one."""
    return bool(any(normalize_number(b) is not None for b in _BOXED.findall(text))
                or any(v is not None for v in stated_answers(text)) or _HASHES.search(text))


def extract_answer(text: str) -> str | None:
    """The final numeric answer of a reply, canonicalised, or None when there is no number
    (or when its last "answer" phrase states an expression it never evaluates)."""
    boxed = _BOXED.findall(text)
    if boxed and (found := normalize_number(boxed[-1])) is not None:
        return found
    stated = stated_answers(text)
    if stated:
        return stated[-1]
    hashes = _HASHES.findall(text)
    if hashes and (found := normalize_number(hashes[-1])) is not None:
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
