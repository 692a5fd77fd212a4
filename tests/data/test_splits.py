"""Splits as the pipeline sees them: a real validation split, and the test split for eval only."""

import pytest

from exectune_jax.data import tasks
from exectune_jax.data.tasks.base import DataError
from exectune_jax.demo.recipe import DEMO_SIZES


@pytest.mark.parametrize("options", [{}, DEMO_SIZES["task.options"]], ids=["default", "demo"])
def test_validation_has_at_least_500_problems_disjoint_from_test_and_train(options):
    task = tasks.get("arith", **options)
    texts = {s: {p.prompt for p in task.problems(s)} for s in ("train", "validation", "test")}
    assert len(texts["validation"]) >= 500
    assert len(texts["validation"]) == len(task.problems("validation"))  # no repeats within
    assert not texts["validation"] & texts["test"]
    assert not texts["validation"] & texts["train"]
    assert not texts["train"] & texts["test"]


def test_a_stage_other_than_eval_is_refused_the_test_split():
    task = tasks.get("arith", n_train=4, n_validation=4, n_test=4)
    before = len(tasks.reads())
    with tasks.reading_as("sft"):
        assert len(task.problems("train")) == len(task.problems("validation")) == 4
        with pytest.raises(DataError, match="stage 'sft' asked for the test split.*only the eval"):
            task.problems("test")
    with tasks.reading_as("eval"):
        assert len(task.problems("test")) == 4
    assert tasks.reads()[before:] == [("sft", "arith", "train"), ("sft", "arith", "validation"),
                                      ("eval", "arith", "test")]


def test_outside_any_stage_every_split_is_open_and_recorded():
    task = tasks.get("arith", n_train=2, n_validation=2, n_test=2)
    before = len(tasks.reads())
    assert len(task.problems("test")) == 2
    assert tasks.reads()[before:] == [(None, "arith", "test")]
