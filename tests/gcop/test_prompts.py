import pytest

from exectune_jax import tokens
from exectune_jax.data.tasks.base import Problem
from exectune_jax.gcop import prompts

P = Problem(id="p", prompt="Maria has 12 apples. She buys 5 more apples. How many apples does Maria have now?",
            answer="17", split="test")
S = "<strategy>\n1. Add 5 to 12.\n</strategy>"


@pytest.mark.parametrize("family", ["math", "code"])
def test_core_prompt_readers_invert_the_template(family):
    with_strategy = prompts.core_messages(P, family, S)
    assert prompts.problem_text(with_strategy) == P.prompt
    assert prompts.strategy_text(with_strategy) == S
    assert prompts.family_of(with_strategy) == family
    alone = prompts.core_messages(P, family, None)
    assert prompts.problem_text(alone) == P.prompt
    assert prompts.strategy_text(alone) is None
    assert prompts.strategy_text(prompts.core_messages(P, family, "   ")) is None


def test_core_prompt_carries_free_form_advice_as_is():
    advice = "Add the five new apples to the twelve."
    assert prompts.strategy_text(prompts.core_messages(P, "math", advice)) == advice


@pytest.mark.parametrize("family", ["math", "code"])
def test_teacher_prompts_expose_problem_and_previous_strategy(family):
    propose = prompts.teacher_propose_messages(P, family)
    assert prompts.problem_text(propose) == P.prompt
    assert prompts.previous_strategy(propose) is None
    assert prompts.family_of(propose) == family
    revise = prompts.teacher_revise_messages(P, family, S, "The core answered 18, which is wrong.")
    assert prompts.problem_text(revise) == P.prompt
    assert prompts.previous_strategy(revise) == S
    assert "18" in revise[-1]["content"]


def test_readers_accept_role_content_pairs_as_the_pool_sends_them():
    pairs = tuple((m["role"], m["content"]) for m in prompts.core_messages(P, "math", S))
    assert prompts.strategy_text(pairs) == S
    assert prompts.problem_text(pairs) == P.prompt


@pytest.mark.parametrize("build", [prompts.guide_messages, prompts.advisor_messages])
@pytest.mark.parametrize("family", ["math", "code"])
def test_guide_and_advisor_prompts_add_at_most_25_tokens_to_the_problem(build, family):
    messages = build(P, family)
    assert [m["role"] for m in messages] == ["user"]
    assert messages[0]["content"].startswith(P.prompt)
    assert tokens.count(messages[0]["content"]) - tokens.count(P.prompt) <= 25


def test_guide_prompt_names_the_format_and_advisor_prompt_does_not():
    assert "<strategy>" in prompts.guide_messages(P, "math")[0]["content"]
    assert "<strategy>" not in prompts.advisor_messages(P, "math")[0]["content"]


def test_unknown_family_is_refused():
    with pytest.raises(ValueError, match="family"):
        prompts.guide_messages(P, "poetry")
