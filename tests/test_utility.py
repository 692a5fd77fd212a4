"""The utility J = accuracy − λ·USD per problem: hand-checked numbers, where the order of two rows
flips, and the λ grid's validation."""

import pytest

from exectune_jax import utility
from exectune_jax.config import ConfigError, load_config

LAMBDAS = [0.0, 10.0, 30.0, 100.0, 300.0, 1000.0]


def _row(method, accuracy, usd_per_problem, n=500, guide_tokens=0):
    row = {"method": method, "n": n, "accuracy": accuracy, "usd_per_problem": usd_per_problem,
           "guide_tokens": guide_tokens}
    return {**row, "utility": utility.row_utilities(row, LAMBDAS)}


# The demo's published core rows: the strong core is 14 points better at 3.75x the price.
CHEAP = _row("core_only", 0.730, 0.000836)
DEAR = _row("core_strong", 0.872, 0.003136)


def test_utility_is_accuracy_less_lambda_times_cost_by_hand():
    assert utility.utility(0.9, 0.002, 0.0) == 0.9
    assert utility.utility(0.9, 0.002, 100.0) == pytest.approx(0.7)
    assert CHEAP["utility"][3] == pytest.approx(0.730 - 0.0836)


def test_the_dearer_more_accurate_row_wins_below_the_crossover_and_loses_above_it():
    lam = utility.crossover(DEAR, CHEAP)
    assert lam == pytest.approx((0.872 - 0.730) / (0.003136 - 0.000836))  # about 61.7 per USD
    assert utility.best_per_lambda([CHEAP, DEAR]) == ["core_strong"] * 3 + ["core_only"] * 3
    assert utility.utility(0.872, 0.003136, lam - 1) > utility.utility(0.730, 0.000836, lam - 1)
    assert utility.utility(0.872, 0.003136, lam + 1) < utility.utility(0.730, 0.000836, lam + 1)


def test_a_row_better_and_cheaper_is_best_at_every_lambda_and_has_no_crossover():
    guided = _row("exectune", 0.932, 0.000392)
    assert utility.best_per_lambda([CHEAP, DEAR, guided]) == ["exectune"] * len(LAMBDAS)
    assert utility.crossover(guided, DEAR) is None and utility.crossover(DEAR, guided) is None


def test_priced_guide_tokens_count_in_the_cost_and_can_flip_the_order():
    # 100 guide tokens per problem at USD 10 per million add USD 0.001 per problem
    guided = {"method": "exectune", "n": 10, "accuracy": 0.80, "usd_per_problem": 0.0004, "guide_tokens": 1000}
    alone = {"method": "core_only", "n": 10, "accuracy": 0.75, "usd_per_problem": 0.0008, "guide_tokens": 0}
    free = utility.row_utilities(guided, [300.0])
    priced = utility.row_utilities(guided, [300.0], guide_usd_per_mtok=10.0)
    assert free == [pytest.approx(0.80 - 0.12)] and priced == [pytest.approx(0.80 - 0.42)]
    assert free[0] > utility.row_utilities(alone, [300.0])[0] > priced[0]
    assert utility.crossover(guided, alone, guide_usd_per_mtok=10.0) == pytest.approx(0.05 / 0.0006)


def test_the_j_table_bolds_the_best_row_in_each_lambda_column():
    lines = utility.table([CHEAP, DEAR], LAMBDAS).splitlines()
    assert lines[0] == "| method | " + " | ".join(f"J at λ={lam:g}" for lam in LAMBDAS) + " |"
    cheap, dear = (line.split(" | ")[1:] for line in lines[2:])
    assert [c.startswith("**") for c in cheap] == [False] * 3 + [True] * 3
    assert [c.startswith("**") for c in dear] == [True] * 3 + [False] * 3
    assert dear[0] == "**87.2**"


def test_the_lambda_grid_starts_at_zero_and_refuses_a_negative_lambda():
    assert load_config(None, []).eval.lambdas[0] == 0.0
    assert load_config(None, ["eval.lambdas=[0, 50]"]).eval.lambdas == [0.0, 50.0]
    with pytest.raises(ConfigError, match=r"`eval.lambdas` is \[0.0, -5.0\]; each of its values must be in"):
        load_config(None, ["eval.lambdas=[0, -5]"])
