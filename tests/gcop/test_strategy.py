import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exectune_jax.data.tasks.base import Problem
from exectune_jax.gcop.strategy import parse, render, leaks

GOOD = "<strategy>\n1. Multiply 12 by 3.\n2. Add 5 to the result of step 1.\n</strategy>"


@pytest.mark.parametrize(
    ("text", "steps"),
    [
        (GOOD, ("Multiply 12 by 3.", "Add 5 to the result of step 1.")),
        ("Here is my plan:\n" + GOOD + "\nstyle: atomic", ("Multiply 12 by 3.", "Add 5 to the result of step 1.")),
        ("<strategy>1. One.</strategy>", ("One.",)),
        ("<strategy>\n  1) First.  \n\n2.  Second.\n</strategy>", ("First.", "Second.")),
        ("<strategy>\r\n1. Windows line.\r\n</strategy>", ("Windows line.",)),
    ],
)
def test_parse_accepts_one_numbered_block(text, steps):
    parsed = parse(text)
    assert parsed.ok and parsed.error is None
    assert parsed.steps == steps


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("1. Multiply 12 by 3.", "missing_tag"),
        ("Multiply.</strategy>", "missing_tag"),
        (GOOD + GOOD, "duplicate_tag"),
        ("<strategy>\n1. a\n<strategy>\n</strategy>", "duplicate_tag"),
        ("<strategy>\n1. Multiply 12 by 3.", "unclosed_tag"),
        ("</strategy> x <strategy>", "unclosed_tag"),
        ("<strategy>\n \n</strategy>", "empty"),
        ("<strategy>\nMultiply 12 by 3.\n</strategy>", "not_numbered"),
        ("<strategy>\n1. a\n3. b\n</strategy>", "not_numbered"),
        ("<strategy>\n1. a\n1. b\n</strategy>", "not_numbered"),
        ("<strategy>\n1.a\n</strategy>", "not_numbered"),
        ("<strategy>\n" + "".join(f"{i}. s\n" for i in range(1, 14)) + "</strategy>", "too_many_steps"),
        ("<strategy>\n1. " + "word " * 201 + "\n</strategy>", "too_long"),
    ],
)
def test_parse_names_the_rule_a_malformed_strategy_breaks(text, kind):
    parsed = parse(text)
    assert not parsed.ok and parsed.steps is None
    assert parsed.error.kind == kind and parsed.error.detail


def test_parse_limits_are_configurable():
    assert parse(GOOD, max_steps=1).error.kind == "too_many_steps"
    assert parse(GOOD, max_words=5).error.kind == "too_long"


def test_render_is_the_canonical_block():
    assert render(["Multiply 12 by 3.", "Add 5 to the result of step 1."]) == GOOD


@pytest.mark.parametrize("bad", ["", "  padded ", "two\nlines", "has <strategy> tag", "sep\u2028x"])
def test_render_refuses_steps_that_would_not_round_trip(bad):
    with pytest.raises(ValueError):
        render(["ok", bad])


step_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40
).map(str.strip).filter(lambda s: s and s.splitlines() == [s] and "<strategy>" not in s and "</strategy>" not in s)


@settings(max_examples=300, deadline=None)
@given(st.lists(step_text, min_size=1, max_size=12))
def test_parse_inverts_render(steps):
    assert parse(render(steps), max_words=10_000).steps == tuple(steps)


MATH = Problem(id="m", prompt="Maria has 12 apples. She buys 3 boxes of 5 apples each. How many?", answer="27",
               split="test")


@pytest.mark.parametrize(
    ("text", "leaked"),
    [
        ("<strategy>\n1. Multiply 3 by 5.\n2. Add 12 to the result of step 1.\n</strategy>", False),
        ("<strategy>\n1. Multiply 3 by 5.\n2. Add 12 to get 27.\n</strategy>", True),
        ("<strategy>\n1. Multiply 3 by 5.\n2. So the answer is 27.\n</strategy>", True),
        ("<strategy>\n1. Check the total is 27.0 apples.\n</strategy>", True),
        ("<strategy>\n1. Subtract 1 from the result of step 27.\n</strategy>", False),
    ],
)
def test_math_leak_is_the_gold_answer_stated_as_a_number(text, leaked):
    assert (leaks(text, MATH, "math") is not None) == leaked


def test_math_answer_that_is_a_problem_number_counts_only_when_claimed():
    p = Problem(id="m", prompt="Tom has 12 cards and 3 friends.", answer="12", split="test")
    assert leaks("<strategy>\n1. Add 3 to 12.\n</strategy>", p, "math") is None
    assert leaks("<strategy>\n1. The answer is 12.\n</strategy>", p, "math") == "states the final answer 12"


CODE = Problem(
    id="c", prompt='def add_all(xs):\n    """Sum of xs."""\n', answer="", split="test",
    meta={"entry_point": "add_all", "tests": "",
          "solution": "    total = 0\n    for x in xs:\n        total += x\n    return total\n"},
)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("<strategy>\n1. Start a running total at zero.\n2. Add each element.\n3. Return it.\n</strategy>", None),
        ("<strategy>\n1. Write:\n```python\nreturn sum(xs)\n```\n</strategy>", "contains a code block"),
        ("<strategy>\n1. def add_all(xs): return sum(xs)\n</strategy>", "contains a function definition"),
        ("<strategy>\n1. total = 0 then for x in xs : total += x and return total\n</strategy>", "repeats"),
    ],
)
def test_code_leak_is_a_code_block_definition_or_most_of_the_reference(text, reason):
    found = leaks(text, CODE, "code")
    assert (found is None) if reason is None else (found is not None and found.startswith(reason))
