import pytest

from exectune_jax.data import tasks
from exectune_jax.data.tasks.base import DataError, Task


def test_builtin_tasks_are_registered_and_satisfy_the_protocol():
    assert {"arith", "gsm8k", "jsonl"} <= set(tasks.names())
    assert isinstance(tasks.get("arith", n_train=1, n_validation=1, n_test=1), Task)


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(DataError, match="unknown task 'nope'.*arith"):
        tasks.get("nope")


def test_unknown_option_is_a_user_error():
    with pytest.raises(DataError, match="task 'arith'.*colour"):
        tasks.get("arith", colour="red")


def test_register_adds_a_factory_and_refuses_a_second_one_under_the_same_name():
    class Tiny:
        name, family = "tiny-test", "math"

        def problems(self, split):
            return []

        def check(self, problem, text):
            raise NotImplementedError

    def factory(**options):
        return Tiny()

    tasks.register("tiny-test")(factory)
    assert tasks.get("tiny-test").name == "tiny-test"
    with pytest.raises(ValueError, match="twice"):
        tasks.register("tiny-test")(lambda **o: Tiny())
