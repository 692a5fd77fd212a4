import pytest

from exectune_jax.data import tasks
from exectune_jax.data.tasks.answers import extract_answer
from exectune_jax.data.tasks.arith import parse_problem
from exectune_jax.data.tasks.base import Problem
from exectune_jax.gcop import prompts
from exectune_jax.gcop.strategy import render
from exectune_jax.sim import models, tokens
from exectune_jax.sim.core import SimCore
from exectune_jax.sim.steps import Claim, Operation, Unfollowable, read_step
from exectune_jax.sim.teacher import atomic

P = Problem(
    id="p", split="test", answer="27",
    prompt="Maria has 12 apples. She buys 3 boxes of apples with 5 apples in each. "
           "How many apples does Maria have now?",
)
ATOMIC = render(["Multiply 3 by 5.", "Add the result of step 1 to 12."])


@pytest.fixture(scope="module")
def task():
    return tasks.get("arith", n_train=0, n_validation=0, n_test=240)


def ask(problem, strategy=None, seed=0, core="sim-core", family="math"):
    return models.get(core).complete(prompts.core_messages(problem, family, strategy), max_tokens=512,
                                     temperature=0.0, seed=seed)


KNOWN = frozenset({"12", "3", "5"})


@pytest.mark.parametrize(
    ("text", "index", "expected"),
    [
        ("Multiply 3 by 5.", 0, Operation("multiply", ("num", 3), ("num", 5))),
        ("Add 5 to 12", 0, Operation("add", ("num", 12), ("num", 5))),
        ("subtract the result of step 1 from 12.", 1, Operation("subtract", ("num", 12), ("step", 0))),
        ("Divide the result of step 2 by 3.", 2, Operation("divide", ("step", 1), ("num", 3))),
        ("So the answer is 27.", 3, Claim("27")),
        ("Add 7 to 12.", 0, Unfollowable("step 1 uses a quantity that is not in the problem or an earlier step")),
        ("Add the result of step 2 to 12.", 1, Unfollowable(
            "step 2 uses a quantity that is not in the problem or an earlier step")),
        ("Multiply 3 by 5, then add 12 to that.", 0, Unfollowable("step 1 is not one operation")),
        ("Add the previous result to 12.", 1, Unfollowable("step 2 is not one operation")),
        ("Now carefully look at the boxes she buys and then multiply 3 by 5 please.", 0,
         Unfollowable("step 1 is too long")),
    ],
)
def test_core_reads_only_atomic_steps_on_known_quantities(text, index, expected):
    assert read_step(text, index, KNOWN) == expected


def test_core_is_deterministic_in_messages_and_seed(task):
    for p in task.problems("test")[:20]:
        assert ask(p, seed=3) == ask(p, seed=3)
    assert len({ask(p, seed=s) for p in task.problems("test")[:20] for s in range(4)}) > 20


def test_core_alone_is_consistent_per_problem(task):
    rows = [[task.check(p, ask(p, seed=s)).correct for s in range(6)] for p in task.problems("test")]
    agree = sum(max(sum(r), 6 - sum(r)) for r in rows) / (6 * len(rows))
    assert agree >= 0.93
    ever_and_never = [r for r in rows if 0 < sum(r) < 6]
    assert len(ever_and_never) / len(rows) <= 0.3


def test_core_alone_success_falls_with_the_number_of_steps(task):
    by_k: dict[int, list[bool]] = {}
    for p in task.problems("test"):
        by_k.setdefault(p.meta["steps"], []).append(task.check(p, ask(p)).correct)
    rate = {k: sum(v) / len(v) for k, v in by_k.items()}
    assert rate[2] - rate[7] >= 0.25
    assert rate[2] >= 0.85


def test_core_follows_a_crisp_strategy_and_states_its_answer():
    text = ask(P, ATOMIC)
    assert text.startswith("I will follow the strategy.")
    assert "Step 1: 3 * 5 = 15." in text and "Step 2: 12 + 15 = 27." in text
    assert text.endswith("The answer is 27.")


def test_core_follows_a_wrong_strategy_faithfully():
    wrong = render(["Multiply 3 by 5.", "Subtract the result of step 1 from 12."])
    assert extract_answer(ask(P, wrong)) == "-3"
    assert extract_answer(ask(P, render(["Add 3 to 5.", "Add 12 to the result of step 1."]))) == "20"


@pytest.mark.parametrize(
    "strategy",
    [
        render(["Multiply 3 by 5, then add 12 to that."]),
        render(["Multiply 3 by 5.", "Add the previous result to 12."]),
        render(["Multiply 15 by 1.", "Add 12 to the result of step 1."]),
        render(["Multiply 3 by 5.", "Add the result of step 3 to 12."]),
        render(["Divide 3 by 5.", "Look at the problem text once more and add 12 to the result of step 1 now."]),
        "<strategy>\nMultiply 3 by 5.\n</strategy>",
        "Think about the boxes first, then the apples.",
    ],
)
def test_core_drops_a_strategy_it_cannot_follow_and_solves_alone(strategy):
    text = ask(P, strategy)
    assert text.startswith("I cannot follow the strategy")
    assert "Let me work through the problem step by step." in text
    assert extract_answer(text) is not None


def test_core_follows_free_form_advice_only_when_every_sentence_is_atomic():
    assert extract_answer(ask(P, "Multiply 3 by 5. Add 12 to the result of step 1.")).startswith("27")
    assert ask(P, "1. Multiply 3 by 5.\n2. Add 12 to the result of step 1.").startswith("I will follow")
    assert ask(P, "Multiply 3 by 5. Then think.").startswith("I cannot follow")


def test_core_takes_a_stated_answer_at_face_value():
    text = ask(P, render(["Multiply 3 by 5.", "The answer is 99."]))
    assert extract_answer(text) == "99"


def test_following_costs_fewer_output_tokens_than_reasoning_alone(task):
    saved = []
    for p in task.problems("test")[:60]:
        program = parse_problem(p.prompt)
        alone = tokens.count(ask(p))
        guided = tokens.count(ask(p, render(atomic(program))))
        saved.append((alone - guided) / len(program.ops))
    assert min(saved) > 15


def test_strong_core_solves_more_problems_alone(task):
    weak = sum(task.check(p, ask(p)).correct for p in task.problems("test"))
    strong = sum(task.check(p, ask(p, core="sim-core-strong")).correct for p in task.problems("test"))
    assert strong - weak >= 0.08 * len(task.problems("test"))


def test_core_still_answers_problems_it_cannot_read():
    p = Problem(id="g", prompt="A robe takes 2 bolts of blue fiber and half that much white fiber. Total?",
                answer="3", split="test")
    assert ask(p).rstrip().splitlines()[-1].startswith("The answer is")


def test_core_writes_a_function_for_code_problems():
    p = Problem(id="c", prompt='def add(a, b):\n    """Sum."""\n', answer="", split="test")
    text = ask(p, family="code")
    assert text.startswith("```python\ndef add(a, b):") and text.endswith("```")


def test_division_result_that_is_not_whole_is_shown_as_a_decimal():
    text = ask(P, render(["Divide 12 by 5."]))
    assert extract_answer(text) == "2.4"


def test_unknown_model_names_are_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="sim-core-strong"):
        models.get("sim-giant")
    with pytest.raises(ValueError):
        SimCore("sim-giant")
    assert models.get("sim-core") is models.get("sim-core")
