"""Advantage estimators and what each reward term does to an advantage (docs/rl.md).

Every number below is worked by hand in the comment beside it. The per-term tests score small
groups with the exectune preset and compare the candidate estimator's advantages (the setting the
validation run in docs/rl.md weighs against the default) with the term's weight on and off: a
term that cannot move an advantage would leave them equal.
"""

import numpy as np
import pytest

from exectune_jax.config import RlConfig
from exectune_jax.errors import UserError
from exectune_jax.train import rewards
from exectune_jax.train.advantages import (
    ESTIMATORS,
    advantages,
    batch_advantages,
    dr_grpo_advantages,
    estimator,
    group_advantages,
    informative_groups,
    informative_share,
)
from exectune_jax.train.rewards import Label

DEFAULT = RlConfig()
CANDIDATE = RlConfig(advantage="dr_grpo", std_floor=0.1, cost_resolution_usd=1e-4)
ALL_VALID = np.ones((2, 4), bool)
HAND = np.array([[1.0, 0.0, 1.0, 0.0], [2.0, 2.0, 2.0, 5.0]])


def test_the_default_is_the_candidate_that_the_validation_run_chose():
    # docs/rl.md: a setting replaces the default only by the rule written there, on the
    # validation split; its validation run ("The validation run") decided for the candidate,
    # whose hand numbers the per-term tests below use
    assert (DEFAULT.advantage, DEFAULT.std_floor, DEFAULT.cost_resolution_usd) == ("dr_grpo", 0.1, 1e-4)
    assert DEFAULT == CANDIDATE
    assert set(ESTIMATORS) == {"grpo", "dr_grpo", "batch"}


def test_grpo_divides_each_group_by_its_own_std():
    adv = group_advantages(HAND, ALL_VALID)
    np.testing.assert_allclose(adv[0], [1, -1, 1, -1], atol=1e-6)
    # mean 2.75, d = -0.75 x3, +2.25; std sqrt(6.75 / 4) = 1.29904
    np.testing.assert_allclose(adv[1], [-0.57735, -0.57735, -0.57735, 1.73205], atol=1e-5)


def test_dr_grpo_keeps_the_centred_reward_in_reward_units():
    adv = dr_grpo_advantages(HAND, ALL_VALID)
    np.testing.assert_allclose(adv, [[0.5, -0.5, 0.5, -0.5], [-0.75, -0.75, -0.75, 2.25]])


def test_batch_divides_by_one_std_pooled_over_the_informative_groups():
    # pooled: (4 * 0.25 + 3 * 0.5625 + 5.0625) / 8 = 0.96875, std 0.984251
    adv = batch_advantages(HAND, ALL_VALID)
    np.testing.assert_allclose(adv[0], [0.508001, -0.508001, 0.508001, -0.508001], atol=1e-5)
    np.testing.assert_allclose(adv[1], [-0.762001, -0.762001, -0.762001, 2.286002], atol=1e-5)
    # a group without spread leaves the pooled std as it was
    with_flat = np.vstack([HAND, [[3.0, 3.0, 3.0, 3.0]]])
    np.testing.assert_allclose(batch_advantages(with_flat, np.ones((3, 4), bool))[:2], adv)


def test_the_std_floor_keeps_a_small_spread_a_small_update():
    small = np.array([[1.0, 1.02]])  # d = -0.01, +0.01; std 0.01
    valid = np.ones((1, 2), bool)
    np.testing.assert_allclose(group_advantages(small, valid), [[-1.0, 1.0]], atol=1e-5)
    np.testing.assert_allclose(group_advantages(small, valid, std_floor=0.1), [[-0.1, 0.1]], atol=1e-6)
    np.testing.assert_allclose(batch_advantages(small, valid, std_floor=0.1), [[-0.1, 0.1]], atol=1e-6)


def test_failed_samples_leave_the_baseline_in_every_estimator():
    rewards_ = np.array([[1.0, 0.0, 123.0, 0.0]])
    valid = np.array([[True, True, False, True]])
    # valid 1, 0, 0: mean 1/3, d = 2/3, -1/3, -1/3; std sqrt(2) / 3
    np.testing.assert_allclose(dr_grpo_advantages(rewards_, valid), [[2 / 3, -1 / 3, 0, -1 / 3]], atol=1e-6)
    np.testing.assert_allclose(group_advantages(rewards_, valid), [[1.41421, -0.70711, 0, -0.70711]],
                               atol=1e-5)


def test_rewards_within_the_spread_tolerance_are_no_spread():
    close = np.array([[1.0, 1.005, 1.0], [1.0, 1.02, 1.0]])
    valid = np.ones((2, 3), bool)
    assert informative_groups(close, valid, spread_tol=0.01).tolist() == [False, True]
    for name in ESTIMATORS:
        adv = advantages(name, close, valid, std_floor=0.1, spread_tol=0.01)
        assert not adv[0].any() and adv[1].any(), name
    assert informative_share([1.0, 1.005, 1.0, 1.0, 1.02, 1.0], 3, spread_tol=0.01) == 0.5
    assert informative_share([1.0, 1.005, 1.0, 1.0, 1.02, 1.0], 3) == 1.0


def test_an_unknown_estimator_is_a_config_error_naming_the_key():
    with pytest.raises(UserError, match="rl.advantage"):
        estimator("ppo")


def test_the_spread_tolerance_is_what_the_resolution_costs_in_reward_units():
    # lambda = 100 reward units per USD: USD 0.0001 is 0.01
    assert rewards.spread_tolerance(rewards.make_spec("exectune"), 1e-4) == pytest.approx(0.01)
    assert rewards.spread_tolerance(rewards.make_spec("advisor"), 1e-4) == 0.0


# ---------------------------------------------------------------------------------------------
# Each reward term moves some advantage under the candidate estimator


def label(**kw) -> Label:
    base = dict(well_formed=True, leaked=False, executed=True, correct=True, core_alone=0.25,
                usd=0.0004)
    return Label(**{**base, **kw})


def candidate_advantages(groups: list[list[Label]], weights: dict[str, float] | None = None) -> np.ndarray:
    spec = rewards.make_spec("exectune", weights)
    scored = np.array([[rewards.score(lab, spec) for lab in g] for g in groups])
    return advantages(CANDIDATE.advantage, scored, np.ones_like(scored, bool),
                      std_floor=CANDIDATE.std_floor,
                      spread_tol=rewards.spread_tolerance(spec, CANDIDATE.cost_resolution_usd))


MALFORMED = label(well_formed=False, executed=False, correct=None, usd=0.0)


def test_the_format_term_moves_the_advantage_of_a_well_formed_strategy_over_a_malformed_one():
    # right, p0 0.25: 0.5 format + 1 + 0.5 * 0.75 improve - 0.04 USD = 1.835; the gate: 0
    np.testing.assert_allclose(candidate_advantages([[label(), MALFORMED]]), [[0.9175, -0.9175]], atol=1e-6)
    np.testing.assert_allclose(candidate_advantages([[label(), MALFORMED]], {"format": 0.0}),
                               [[0.6675, -0.6675]], atol=1e-6)


def test_the_success_term_moves_the_advantage_of_a_right_answer_over_a_wrong_one():
    # right 1.835; wrong 0.5 - 0.5 * 0.25 harm - 0.04 = 0.335: d = +-0.75
    pair = [[label(), label(correct=False)]]
    np.testing.assert_allclose(candidate_advantages(pair), [[0.75, -0.75]], atol=1e-6)
    # without success the pair differs by improve + harm only: 0.375 + 0.125 = 0.5
    np.testing.assert_allclose(candidate_advantages(pair, {"success": 0.0}), [[0.25, -0.25]], atol=1e-6)


HEADROOM = [[label(core_alone=0.25), label(core_alone=0.25, correct=False)],
            [label(core_alone=1.0), label(core_alone=1.0, correct=False)]]


def test_the_improve_term_weighs_problems_the_core_alone_fails():
    # success weight a(p0) = 1 + w_improve (1 - p0) + w_harm p0; d = +-a / 2
    # both terms at 0.5: a = 1.5 on both problems
    np.testing.assert_allclose(candidate_advantages(HEADROOM), [[0.75, -0.75], [0.75, -0.75]], atol=1e-6)
    # without improve: a(0.25) = 1.125, a(1.0) = 1.5: the problem with headroom lost weight
    np.testing.assert_allclose(candidate_advantages(HEADROOM, {"improve": 0.0}),
                               [[0.5625, -0.5625], [0.75, -0.75]], atol=1e-6)


def test_the_harm_term_weighs_problems_the_core_alone_solves():
    # without harm: a(0.25) = 1.375, a(1.0) = 1.0
    np.testing.assert_allclose(candidate_advantages(HEADROOM, {"harm": 0.0}),
                               [[0.6875, -0.6875], [0.5, -0.5]], atol=1e-6)


def test_per_group_std_erases_what_improve_and_harm_say_about_p0():
    # the finding, kept as a contrast: grpo gives +-1 whatever the weights
    spec = rewards.make_spec("exectune", {"improve": 0.0})
    scored = np.array([[rewards.score(lab, spec) for lab in g] for g in HEADROOM])
    np.testing.assert_allclose(group_advantages(scored, np.ones_like(scored, bool)),
                               [[1, -1], [1, -1]], atol=1e-6)


def test_the_leak_term_moves_the_advantage_of_a_leaking_strategy():
    pair = [[label(), label(leaked=True)]]  # differ by w_leak = 2
    np.testing.assert_allclose(candidate_advantages(pair), [[1.0, -1.0]], atol=1e-6)
    assert not candidate_advantages(pair, {"leak": 0.0}).any()


def test_the_cost_term_moves_the_advantage_of_a_dearer_strategy_above_the_resolution():
    pair = [[label(usd=0.0004), label(usd=0.0014)]]  # USD 0.001 apart: 100 * 0.001 = 0.1
    np.testing.assert_allclose(candidate_advantages(pair), [[0.05, -0.05]], atol=1e-6)
    assert not candidate_advantages(pair, {"cost": 0.0}).any()


def test_the_judge_term_moves_the_advantage_of_a_better_judged_strategy():
    pair = [[label(judge=0.9), label(judge=0.3)]]  # 0.5 * 0.6 = 0.3 apart
    np.testing.assert_allclose(candidate_advantages(pair, {"judge": 0.5}), [[0.15, -0.15]], atol=1e-6)
    assert not candidate_advantages(pair).any()


def test_the_followed_term_moves_the_advantage_of_a_followed_strategy():
    pair = [[label(followed="yes"), label(followed="no")]]  # 0.5 apart
    np.testing.assert_allclose(candidate_advantages(pair, {"followed": 0.5}), [[0.25, -0.25]], atol=1e-6)
    assert not candidate_advantages(pair).any()


# ---------------------------------------------------------------------------------------------
# Token-count noise in the bill


def test_a_cost_only_difference_of_usd_0_00004_makes_no_full_size_update():
    group = [[label()] * 7 + [label(usd=0.00044)]]  # rewards 1.835 x7 and 1.831
    assert not candidate_advantages(group).any()  # 0.004 apart, within the 0.01 tolerance
    spec = rewards.make_spec("exectune")
    scored = np.array([[rewards.score(lab, spec) for lab in group[0]]])
    valid = np.ones_like(scored, bool)
    # without the tolerance, grpo's floor still keeps it small: d = -0.0035, std 0.001323 < 0.1
    floored = group_advantages(scored, valid, std_floor=CANDIDATE.std_floor)
    np.testing.assert_allclose(floored[0, [0, 7]], [0.005, -0.035], atol=1e-6)
    # unfloored per-group std: the full-size update the issue found, -2.65 / +0.38
    plain = group_advantages(scored, valid)
    np.testing.assert_allclose(plain[0, [0, 7]], [1 / np.sqrt(7), -7 / np.sqrt(7)], atol=1e-3)
    # the same group with one wrong answer instead: plain grpo cannot tell them apart
    wrong = np.array([[rewards.score(lab, spec) for lab in [label()] * 7 + [label(correct=False)]]])
    np.testing.assert_allclose(group_advantages(wrong, valid), plain, atol=1e-3)
    # while the default gives that one a real update: d = -1.5 * 7 / 8, +1.5 / 8
    np.testing.assert_allclose(candidate_advantages([[label()] * 7 + [label(correct=False)]])[0, [0, 7]],
                               [0.1875, -1.3125], atol=1e-6)
