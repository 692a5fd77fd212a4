"""`sim-judge`: a stand-in for a judge model that decides "followed" from the texts alone.

It reads the judge prompt (problem, strategy, the core's response) the way a careful reader
would: in a world whose core announces it, a response that says it sets the strategy aside did
not follow it; otherwise (and always where the core does not announce, `core_announces_aside`
false) the strategy's steps, read as the core's step language, must each appear as the
response's computation of the same step, in order, on the operands the step names (an
arithmetic slip is still following). Read from the computations alone it can be wrong: a core
that sets the strategy aside and happens to compute the same steps looks as if it followed.
It never sees what the core "really" did; the server keeps that apart. For a `funcs` code
problem it reads the response's code instead: one line per operation the strategy names.

Then, like a real judge model, it errs at the world's stated rates: a "no" reading is answered
"yes" with probability `judge_false_yes` and a "yes" reading "no" with `judge_false_no`, decided
by a stable hash of the exchange (problem, strategy, response), so one exchange always gets the
same verdict and a higher rate flips a superset of the exchanges a lower one flips.

It answers in the fixed form of the follow check: `followed: yes|no` then `reason: ...`.
"""

from __future__ import annotations

import re
from fractions import Fraction

from exectune_jax.data.tasks import funcs
from exectune_jax.data.tasks.code import extract_code
from exectune_jax.gcop import prompts
from exectune_jax.gcop.trace import number, read_lines
from exectune_jax.sim import code_follow, follow
from exectune_jax.sim.core import unit
from exectune_jax.sim.steps import SYMBOLS
from exectune_jax.world import WORLD, WorldSpec

_ASIDE = re.compile(r"cannot follow the strategy|cannot carry out|my own way|ignore the strategy",
                    re.IGNORECASE)
_COMPUTED = re.compile(r"(-?\d+(?:\.\d+)?) ([-+*/]) (-?\d+(?:\.\d+)?) = (-?\d+(?:\.\d+)?)")
_PLAIN_RETURNS = (("ret_list", None), ("ret_text", None))
_CLAIMED = re.compile(r"the strategy says the answer is (-?\d+(?:\.\d+)?)", re.IGNORECASE)


def decide(problem: str, strategy: str, response: str, *, read_aside: bool = True) -> tuple[bool, str]:
    """(followed, reason) from the three texts; `read_aside`: a response that says it sets the
    strategy aside is "no" on that sentence alone (false: the computations alone decide).

    Each operation the strategy names (one per atomic step, two in a chained step, one named
    inside a prose sentence) must be the response's next computation: the same operation, on
    the problem's numbers the step names, or on results the response computed before where the
    step refers to one. A stated answer must be taken up; prose that names no operation is
    commentary."""
    if read_aside and _ASIDE.search(response):
        return False, "the response sets the strategy aside and solves the problem its own way"
    program = funcs.parse_problem(problem)
    if program is not None:
        return decide_code(program, strategy, response)
    sentences, block, why = follow.sentences_of(strategy)
    if sentences is None:
        return False, f"the strategy has no steps the response could carry out ({why})"
    computed = []
    for _, body in read_lines(response):
        m = _COMPUTED.search(body)
        if m is None:
            return False, "a step line of the response computes nothing the strategy asked for"
        computed.append((m.group(2), number(m.group(1)), number(m.group(3)), number(m.group(4))))
    claims = {number(c) for c in _CLAIMED.findall(response)}
    results: list[Fraction] = []
    lines = iter(computed)
    for i, sentence in enumerate(sentences):
        body = sentence.strip().rstrip(".").strip()
        stated = follow.claim_of(body)
        if stated is not None:
            if number(stated) not in claims:
                return False, f"the response does not take up the answer step {i + 1} states"
            continue
        found = follow.phrases(body)
        if not found:
            if block:
                return False, f"step {i + 1} names no computation the response could carry out"
            continue
        for phrase in found:
            line = next(lines, None)
            if line is None:
                return False, f"the response stops before step {i + 1}"
            op, a, b, result = line
            # "Add X to Y" and "Subtract X from Y" name the right operand first.
            first, second = ((phrase.second, phrase.first) if phrase.op in ("add", "subtract")
                             else (phrase.first, phrase.second))
            if op != SYMBOLS[phrase.op] or not (_names(first, a, results) and _names(second, b, results)):
                return False, f"step {i + 1} is not what the response computes at that point"
            results.append(result)
    if next(lines, None) is not None:
        return False, "the response computes more than the strategy asks"
    return True, "the response carries out every step of the strategy in order"


def decide_code(program: funcs.Program, strategy: str, response: str) -> tuple[bool, str]:
    """(followed, reason) for a funcs problem: the response's code must write the operations the
    strategy names, in order, one line each (a mistaken line of the right operation is a slip,
    still following); a final plain `return` the strategy did not ask for is the function's end."""
    wanted, why = code_follow.strategy_ops(strategy, program)
    if wanted is None:
        return False, why
    code = extract_code(response, program.name)
    if code is None:
        return False, "the response writes no code"
    written = code_follow.code_ops(code, program.domain)
    if None in written:
        return False, "a line of the response's code is none of the strategy's steps"
    if written and written[-1] in _PLAIN_RETURNS and written[-1:] != wanted[-1:]:
        written = written[:-1]
    if written != wanted:
        return False, "the response's code does not write the strategy's steps in order"
    return True, "the response's code writes every step of the strategy in order"


def _names(operand: str, value: Fraction, earlier: list[Fraction]) -> bool:
    """Whether `value` is what the step's operand names: its number, or an earlier result."""
    text = operand.lstrip("$")
    return Fraction(int(text)) == value if text.isdigit() else value in earlier


def verdict(problem: str, strategy: str, response: str, world: WorldSpec = WORLD) -> tuple[bool, str]:
    """(followed, reason) as sim-judge answers in `world`: its reading (`decide`), flipped at the
    world's error rates by a stable hash of the exchange."""
    followed, reason = decide(problem, strategy, response, read_aside=world.core_announces_aside)
    draw = unit("judge", problem, strategy, response)
    if not followed and draw < world.judge_false_yes:
        return True, "the response carries out every step of the strategy in order"
    if followed and draw < world.judge_false_no:
        return False, "the response's computations do not match the strategy's steps"
    return followed, reason


class SimJudge:
    name = "sim-judge"

    def __init__(self, world: WorldSpec = WORLD) -> None:
        self.world = world

    def complete(self, messages, *, max_tokens: int = 64, temperature: float = 0.0, seed: int = 0) -> str:
        if not prompts.is_judge_follow(messages):
            return "I only judge whether a response followed a strategy."
        response = prompts.response_text(messages)
        strategy = prompts.strategy_text(messages)
        if response is None or strategy is None:
            return "I need a problem, a strategy and a response to judge."
        followed, reason = verdict(prompts.problem_text(messages), strategy, response, self.world)
        return f"followed: {'yes' if followed else 'no'}\nreason: {reason}"
