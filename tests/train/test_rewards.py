import json

import pytest

from exectune_jax.errors import UserError
from exectune_jax.train import rewards
from exectune_jax.train.rewards import Label

EXECTUNE = rewards.make_spec("exectune")
ADVISOR = rewards.make_spec("advisor")


def label(**kw) -> Label:
    base = dict(well_formed=True, leaked=False, executed=True, correct=True, core_alone=0.25,
                usd=0.001)
    return Label(**{**base, **kw})


def test_each_term_has_its_hand_computed_value():
    values = rewards.term_values(label(correct=True, core_alone=0.25, usd=0.002, judge=0.7))
    assert values == pytest.approx({
        "format": 1.0, "success": 1.0, "improve": 0.75, "harm": 0.0, "leak": 0.0,
        "cost": 0.002, "judge": 0.7, "followed": 0.0,
    })
    failed = rewards.term_values(label(correct=False, core_alone=0.25, leaked=True))
    assert failed["success"] == 0.0 and failed["improve"] == 0.0
    assert failed["harm"] == pytest.approx(0.25) and failed["leak"] == 1.0


def test_exectune_total_is_weighted_sum_with_penalties_subtracted():
    # 0.5 format + 1.0 success + 0.5 * 0.75 improve - 100 * 0.002 USD
    assert rewards.score(label(correct=True, core_alone=0.25, usd=0.002), EXECTUNE) == (
        pytest.approx(0.5 + 1.0 + 0.375 - 0.2)
    )
    # 0.5 format - 0.5 * 0.8 harm - 2.0 leak - 100 * 0.001 USD
    assert rewards.score(label(correct=False, core_alone=0.8, leaked=True), EXECTUNE) == (
        pytest.approx(0.5 - 0.4 - 2.0 - 0.1)
    )


def test_gate_zeroes_a_malformed_strategy_whatever_else_happened():
    malformed = label(well_formed=False, executed=False, correct=None, usd=0.0, leaked=True)
    assert rewards.score(malformed, EXECTUNE) == 0.0


def test_well_formed_free_non_leaking_strategy_never_scores_below_the_gate_floor():
    for p0 in (0.0, 0.5, 1.0):
        for correct in (True, False):
            assert rewards.score(label(correct=correct, core_alone=p0, usd=0.0), EXECTUNE) >= 0.0


def test_advisor_preset_rewards_outcome_only_without_gate():
    assert not ADVISOR.gate and ADVISOR.messages == "advisor"
    free_form = label(well_formed=False, leaked=True, correct=True, core_alone=0.9, usd=0.01)
    assert rewards.score(free_form, ADVISOR) == 1.0
    assert rewards.score(label(well_formed=False, correct=False), ADVISOR) == 0.0


def test_failed_call_is_excluded_not_scored_zero():
    assert rewards.score(label(correct=None), EXECTUNE) is None
    assert rewards.score(label(correct=None), ADVISOR) is None


def test_missing_judge_score_excludes_the_sample_only_when_the_judge_counts():
    with_judge = rewards.make_spec("exectune", {"judge": 0.5})
    assert rewards.score(label(judge=None), with_judge) is None
    assert rewards.score(label(judge=None), EXECTUNE) is not None
    assert rewards.score(label(judge=1.0), with_judge) == pytest.approx(
        rewards.score(label(judge=1.0), EXECTUNE) + 0.5
    )


def test_unknown_core_alone_rate_drops_improve_and_harm_only():
    values = rewards.term_values(label(correct=False, core_alone=None))
    assert values["improve"] == 0.0 and values["harm"] == 0.0 and values["format"] == 1.0


def test_weight_overrides_apply_and_unknown_or_negative_names_fail_clearly():
    spec = rewards.make_spec("exectune", {"cost": 0.0, "leak": 5.0})
    assert spec.weights["cost"] == 0.0 and spec.weights["leak"] == 5.0 and spec.gate
    with pytest.raises(UserError, match=r"rl\.weights\.sucess"):
        rewards.make_spec("exectune", {"sucess": 1.0})
    with pytest.raises(UserError, match=r"rl\.weights\.harm"):
        rewards.make_spec("exectune", {"harm": -1.0})
    with pytest.raises(UserError, match="rl.preset"):
        rewards.make_spec("grpo")


def test_core_alone_rate_ignores_failed_calls():
    assert rewards.core_alone_rate([True, False, None, True]) == pytest.approx(2 / 3)
    assert rewards.core_alone_rate([None, None]) is None


def test_core_alone_cache_persists_rates_and_remeasures_unknown_problems(tmp_path):
    path = tmp_path / "core_alone.json"
    cache = rewards.CoreAloneCache(path)
    cache.update({"a": 0.5, "b": None})
    assert json.loads(path.read_text()) == {"a": 0.5}
    again = rewards.CoreAloneCache(path)
    assert again.get("a") == 0.5 and again.missing(["a", "b", "b", "c"]) == ["b", "c"]


def test_judge_reply_parses_to_unit_interval():
    assert rewards.parse_judge_score("Score: 7") == pytest.approx(0.7)
    assert rewards.parse_judge_score("12") == 1.0
    assert rewards.parse_judge_score("no idea") is None


def test_followed_term_is_off_by_default_and_adds_its_weight_when_set():
    assert EXECTUNE.weights["followed"] == 0.0 and ADVISOR.weights["followed"] == 0.0
    assert rewards.score(label(followed="yes"), EXECTUNE) == rewards.score(label(followed="no"), EXECTUNE)
    spec = rewards.make_spec("exectune", {"followed": 0.5})
    assert rewards.score(label(followed="yes"), spec) == pytest.approx(
        rewards.score(label(followed="no"), spec) + 0.5)


def test_undecided_follow_check_excludes_the_sample_only_when_followed_counts():
    spec = rewards.make_spec("exectune", {"followed": 0.5})
    assert rewards.score(label(followed="unknown"), spec) is None
    assert rewards.score(label(followed="unknown"), EXECTUNE) is not None
    gated = label(well_formed=False, executed=False, correct=None, usd=0.0, followed=None)
    assert rewards.score(gated, spec) == 0.0  # never executed: nothing to check, the gate decides
