import random

import pytest

from exectune_jax import tokens
from exectune_jax.data import tasks
from exectune_jax.data.tasks.answers import extract_answer
from exectune_jax.data.tasks.arith import parse_problem
from exectune_jax.data.tasks.base import Problem
from exectune_jax.gcop import prompts
from exectune_jax.gcop.strategy import render
from exectune_jax.sim import models
from exectune_jax.sim.core import SimCore
from exectune_jax.sim import follow
from exectune_jax.sim.teacher import atomic, write
from exectune_jax.world import WORLD, world_from

P = Problem(
    id="p", split="test", answer="27",
    prompt="Maria has 12 apples. She buys 3 boxes of apples with 5 apples in each. "
           "How many apples does Maria have now?",
)
ATOMIC = render(["Multiply 3 by 5.", "Add the result of step 1 to 12."])


@pytest.fixture(scope="module")
def task():
    return tasks.get("arith", n_train=0, n_validation=240, n_test=0)


def ask(problem, strategy=None, seed=0, core="sim-core", family="math", world=WORLD):
    return models.get(core, world).complete(prompts.core_messages(problem, family, strategy), max_tokens=512,
                                     temperature=0.0, seed=seed)


KNOWN = frozenset({"12", "3", "5"})
ALWAYS = lambda i, p: p > 0  # noqa: E731 - carries out every step it can at all
NO_SLIP = lambda: 0  # noqa: E731


def run(text, decide=ALWAYS):
    return follow.execute(text, KNOWN, WORLD, decide, NO_SLIP)


@pytest.mark.parametrize(
    ("text", "kinds"),
    [
        ("Multiply 3 by 5.", {"atomic"}),
        ("Add 5 to 12", {"atomic"}),
        ("Then think about adding 5 to the amount so far.", {"prose"}),
        ("Multiply 3 by 5, then add 12 to that.", {"compound"}),
        ("Add the previous result to 12.", {"atomic", "vague"}),
        ("Then think about adding an earlier amount to 12.", {"prose", "vague"}),
        ("Now carefully look at the boxes she buys and then multiply 3 by 5 please.", {"prose", "verbose"}),
    ],
)
def test_each_step_is_graded_by_what_it_asks(text, kinds):
    body = text.rstrip(".")
    assert follow.kinds(body, follow.phrases(body), WORLD) == kinds
    assert follow.probability(kinds, WORLD) == min(getattr(WORLD, f"follow_{k}") for k in kinds)


def test_follow_probabilities_fall_from_atomic_to_vague():
    w = WORLD
    assert w.follow_atomic > w.follow_prose > w.follow_compound > max(w.follow_verbose, w.follow_vague) > 0


@pytest.mark.parametrize(
    ("text", "stopped", "reason"),
    [
        (render(["Add 7 to 12."]), 0, "not in the problem"),
        (render(["Add the result of step 1 to 12."]), 0, "not in the problem or an earlier step"),
        (render(["Multiply 3 by 5.", "Add the result of step 3 to 12."]), 1, "earlier step"),
        (render(["Multiply 3 by 5.", "Think about the apples."]), 1, "not an operation"),
        (render(["Add 3 to 5, then add 12 to that, then add 5 to that."]), 0, "more than two"),
        ("Think about the boxes first, then the apples.", 0, "names no operation"),
    ],
)
def test_steps_it_cannot_carry_out_stop_the_following_there(text, stopped, reason):
    done = run(text)
    assert (done.stopped, done.followed_all) == (stopped, False)
    assert reason in done.reason
    assert len({d.step for d in done.done}) == stopped


def test_compound_prose_and_vague_steps_compute_what_they_say_when_carried_out():
    assert run(render(["Multiply 3 by 5, then add 12 to that."])).done[-1].result == 27
    assert run("First think about multiplying 3 by 5. Then think about adding the amount so far to 12."
               ).done[-1].result == 27
    vague = run(render(["Multiply 3 by 5.", "Add 12 to the previous result."]))
    assert vague.followed_all and vague.done[-1].result == 27


def test_prose_sentences_that_name_no_operation_are_commentary_in_advice():
    done = run("Read the story carefully. Multiply 3 by 5. Then add 12 to the result of step 2. Check it.")
    assert done.followed_all and done.done[-1].result == 27


def test_the_core_stops_at_the_first_step_it_does_not_carry_out():
    decide = lambda i, p: i < 1  # noqa: E731
    done = run(render(["Multiply 3 by 5.", "Add 12 to the result of step 1.", "Add 3 to 5."]), decide)
    assert done.stopped == 1 and [d.result for d in done.done] == [15]


def test_core_is_deterministic_in_messages_and_seed(task):
    for p in task.problems("validation")[:20]:
        assert ask(p, seed=3) == ask(p, seed=3)
    assert len({ask(p, seed=s) for p in task.problems("validation")[:20] for s in range(4)}) > 20


def test_core_alone_is_consistent_per_problem(task):
    rows = [[task.check(p, ask(p, seed=s)).correct for s in range(6)] for p in task.problems("validation")]
    agree = sum(max(sum(r), 6 - sum(r)) for r in rows) / (6 * len(rows))
    assert agree >= 0.93
    ever_and_never = [r for r in rows if 0 < sum(r) < 6]
    assert len(ever_and_never) / len(rows) <= 0.3


def test_core_alone_success_falls_with_the_number_of_steps(task):
    by_k: dict[int, list[bool]] = {}
    for p in task.problems("validation"):
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
        render(["Multiply 15 by 1.", "Add 12 to the result of step 1."]),
        render(["Add the result of step 2 to 12.", "Multiply 3 by 5."]),
        "<strategy>\nMultiply 3 by 5.\n</strategy>",
        "Think about the boxes first, then the apples.",
    ],
)
def test_core_drops_a_strategy_it_cannot_start_and_solves_alone(strategy):
    announcing = world_from({"core_announces_aside": True})
    text = ask(P, strategy, world=announcing)
    assert text.startswith("I cannot follow the strategy")
    assert "Let me work through the problem step by step." in text
    assert extract_answer(text) is not None
    quiet = ask(P, strategy)  # version 3's core says nothing of it and just solves
    assert quiet.startswith("Let me work through the problem step by step.") and "cannot" not in quiet
    assert extract_answer(quiet) is not None


def test_core_keeps_what_it_followed_and_goes_on_alone_from_the_first_step_it_cannot_do():
    strategy = render(["Multiply 3 by 5.", "Add 7 to the result of step 1."])
    text = ask(P, strategy, world=world_from({"core_announces_aside": True}))
    assert text.startswith("I will follow the strategy.\nStep 1: 3 * 5 = 15.\nI cannot carry out the rest")
    assert extract_answer(text) == "27"  # on track after step 1; one easy operation left
    quiet = ask(P, strategy)
    assert quiet.startswith("I will follow the strategy.\nStep 1: 3 * 5 = 15.\n") and "cannot" not in quiet
    assert extract_answer(quiet) == "27"


@pytest.mark.parametrize(("strategy", "followed", "carried_out"), [
    (ATOMIC, True, 2),
    (render(["Multiply 3 by 5.", "Add 7 to the result of step 1."]), False, 1),
    (render(["Multiply 15 by 1.", "Add 12 to the result of step 1."]), False, 0),
])
def test_the_ground_truth_says_how_many_of_the_strategys_operations_were_carried_out(
        strategy, followed, carried_out):
    reply = models.get("sim-core").respond(prompts.core_messages(P, "math", strategy))
    assert (reply.followed, reply.carried_out) == (followed, carried_out)


def test_replays_make_the_same_follow_decisions(task):
    first, again = SimCore("sim-core"), SimCore("sim-core")
    for p in task.problems("validation")[:40]:
        messages = prompts.core_messages(p, "math", render(write_compound(p)))
        for seed in (0, 1, 2):
            assert first.respond(messages, seed=seed) == again.respond(messages, seed=seed)


def write_compound(p):
    return write(parse_problem(p.prompt), "compound", random.Random(p.id)) or atomic(parse_problem(p.prompt))


def test_free_form_advice_sentences_are_steps_like_any_other():
    assert extract_answer(ask(P, "Multiply 3 by 5. Add 12 to the result of step 1.")) == "27"
    assert ask(P, "1. Multiply 3 by 5.\n2. Add 12 to the result of step 1.").startswith("I will follow")
    assert extract_answer(ask(P, "First think about multiplying 3 by 5. Then think about adding the amount "
                                 "so far to 12. Check your arithmetic.")) == "27"


def test_core_takes_a_stated_answer_at_face_value():
    text = ask(P, render(["Multiply 3 by 5.", "The answer is 99."]))
    assert extract_answer(text) == "99"


def test_following_costs_fewer_output_tokens_than_reasoning_alone(task):
    saved, followed = [], []
    core = models.get("sim-core")
    for p in task.problems("validation")[:60]:
        program = parse_problem(p.prompt)
        alone = tokens.count(ask(p))
        reply = core.respond(prompts.core_messages(p, "math", render(atomic(program))))
        saved.append((alone - tokens.count(reply.text)) / len(program.ops))
        followed.append(reply.followed)
    assert min(s for s, f in zip(saved, followed) if f) > 15
    assert sum(saved) / len(saved) > 15


def test_strong_core_solves_more_problems_alone(task):
    weak = sum(task.check(p, ask(p)).correct for p in task.problems("validation"))
    strong = sum(task.check(p, ask(p, core="sim-core-strong")).correct for p in task.problems("validation"))
    assert strong - weak >= 0.08 * len(task.problems("validation"))


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


def follow_share(task, core, style, world=WORLD):
    """Share of the teacher's `style` strategies that `core` followed to the end, on validation."""
    c = SimCore(core, world)
    followed = []
    for i, p in enumerate(task.problems("validation")):
        steps = write(parse_problem(p.prompt), style, random.Random(i), world)
        if steps:
            followed.append(c.respond(prompts.core_messages(p, "math", render(steps))).followed)
    return sum(followed) / len(followed)


def test_the_next_core_follows_steps_by_its_own_profile(task):
    # sim-core-next re-plans terse steps more often and reads merged steps better (world.py)
    assert follow_share(task, "sim-core-next", "atomic") < follow_share(task, "sim-core", "atomic") - 0.05
    assert follow_share(task, "sim-core-next", "compound") > follow_share(task, "sim-core", "compound") + 0.1
    # its profile is a world value: overriding it moves sim-core-next and leaves sim-core alone
    world = world_from({"core_next_follow": {"compound": 0.0, "atomic": 0.0}})
    assert follow_share(task, "sim-core-next", "compound", world) == 0.0
    assert follow_share(task, "sim-core", "compound", world) == follow_share(task, "sim-core", "compound")
