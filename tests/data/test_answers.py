import pytest

from exectune_jax.data.tasks.answers import extract_answer, normalize_number, numbers_in, same_number


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is 18.", "18"),
        ("The answer is $1,200.50.", "1200.5"),
        ("So the total is \\boxed{42} apples.", "42"),
        ("She makes 18 dollars every day.", "18"),
        ("Work...\n#### 70000", "70000"),
        ("The answer is: **42**", "42"),
        ("answer: -5", "-5"),
        ("3 + 4 = 7, then 7 * 2 = 14.", "14"),
        ("The answer is 18 apples. I checked 3 times.", "18"),
        ("\\boxed{7} but the answer is 9", "7"),
        ("So \\boxed{18 \\text{ dollars}} in all, from 3 days.", "18"),
        ("Thus \\boxed{\\$1,250}.", "1250"),
        ("no numbers here", None),
        ("", None),
    ],
)
def test_extract_answer_prefers_explicit_markers_then_last_number(text, expected):
    assert extract_answer(text) == expected


def test_normalize_number_strips_currency_commas_and_trailing_zeros():
    assert normalize_number("$1,000.00") == "1000"
    assert normalize_number("2.50 kg") == "2.5"
    assert normalize_number("none") is None


def test_numbers_in_lists_numbers_in_order_and_keeps_list_commas_apart():
    assert numbers_in("3, 4 and 1,500 then $7.") == ["3", "4", "1500", "7"]


def test_same_number_is_exact():
    assert same_number("18", "18.0")
    assert not same_number("18", "19")
    assert not same_number("x", "18")
