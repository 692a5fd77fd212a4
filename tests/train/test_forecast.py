"""train/forecast.py: the guide pilot's count of the core requests the call cache answers, and
RL's lines priced from it."""

import numpy as np
import pytest

from exectune_jax.api.cache import Cache
from exectune_jax.api.providers import Completion
from exectune_jax.config import load_config
from exectune_jax.cost import DEFAULT_STRATEGY
from exectune_jax.data import tasks
from exectune_jax.train import forecast, rewards
from exectune_jax.train.dynamic_sampling import ReplacementStream
from exectune_jax.train.rollouts import Rollout

SIZES = ["task.options={n_train: 16, n_validation: 2, n_test: 8}", "sample.n_problems=16",
         "sample.proposals=2", "rl.steps=2", "rl.prompts_per_step=2", "rl.group_size=2", "rl.held_out=0",
         "eval.n_problems=8", "metrics.progress=false"]


def test_guide_pilot_counts_a_cached_request_and_a_repeat_within_it_as_replayed(tmp_path):
    cfg = load_config(None, [f"run_dir={tmp_path}", *SIZES])
    task = tasks.get("arith", n_train=16, n_validation=2, n_test=8)
    p0, p1 = task.problems("train")[:2]
    seen, new = "<strategy>\n1. Add 2 to 3.\n</strategy>", "<strategy>\n1. Multiply 2 by 3.\n</strategy>"
    # group of 3 per problem: p0 writes the strategy sampling already executed, a new one twice;
    # p1 the new one (another problem: another request), a malformed text, and p0's old one
    texts = [seen, new, new, new, "no strategy here", seen]
    rollout = Rollout(0, 0, [p0, p1], 3, [[]] * 6, [[]] * 6, [np.zeros(0)] * 6, texts)
    with Cache(tmp_path / "calls.sqlite") as cache:
        [key] = forecast.core_request_keys(cfg, task.family, [(p0, seen)])
        cache.put(key, cfg.api.core.model, Completion("6", "stop", 80, 37))
        gated = forecast.guide_pilot(cfg, task.family, rewards.make_spec("exectune"), [rollout], cache.get)
        free = forecast.guide_pilot(cfg, task.family, rewards.make_spec("advisor"), [rollout], cache.get)
    assert (gated.sampled, gated.executed, gated.replayed) == (6, 5, 2)  # the gate stops one
    assert gated.replayed_share == pytest.approx(2 / 5) and gated.replayed_output == 37
    # its standard error over problems (p0: 2 of 3 replayed, p1: 0 of 2): residuals 0.8 and -0.8
    # from the pooled share, sqrt(1.28 / (2 * 1)) / 2.5 executed per problem
    assert gated.replayed_se == pytest.approx(0.32)
    assert [(p.id, t) for p, t in gated.priced] == [(p0.id, new), (p1.id, new), (p1.id, seen)]
    assert (free.executed, free.replayed) == (6, 2)  # advice has no gate: the text goes too
    # RL's calls priced from the pilot: its executed share, its replayed share
    drawn = [p for batch in forecast.rl_draws(cfg, task.problems("train"), cfg.rl.steps) for p in batch]
    core, judge = forecast.rl_lines(cfg, "rl", "exectune", drawn, task.family, gated,
                                    strategy=DEFAULT_STRATEGY, core_out=50.0, advice_out=200.0,
                                    judge_out=10.0, scale=1.0, repeat=0.45)
    assert core.calls == pytest.approx(len(drawn) * cfg.rl.group_size * 5 / 6)
    assert core.replayed == judge.replayed == pytest.approx(0.4)
    assert core.source == "guide pilot (6 texts)"
    # a guide whose every text the gate stops sends RL nothing to pay for
    nothing = Rollout(0, 0, [p0], 2, [[]] * 2, [[]] * 2, [np.zeros(0)] * 2, ["no", "strategy"])
    stopped = forecast.guide_pilot(cfg, task.family, rewards.make_spec("exectune"), [nothing], lambda k: None)
    lines = forecast.rl_lines(cfg, "rl", "exectune", drawn, task.family, stopped,
                              strategy=DEFAULT_STRATEGY, core_out=50.0, advice_out=200.0,
                              judge_out=10.0, scale=1.0, repeat=0.45)
    assert [ln.calls for ln in lines] == [0.0]


def test_the_forecast_counts_every_problem_dynamic_sampling_may_draw(tmp_path):
    """With rl.max_extra_groups on, what RL executes depends on outcomes; the forecast counts the
    cap on every step, and the extra problems are the ones the run's replacement stream draws."""
    task = tasks.get("arith", n_train=64, n_validation=0, n_test=0)
    problems = task.problems("train")
    off = load_config(None, [f"run_dir={tmp_path}", "rl.steps=3", "rl.prompts_per_step=4",
                             "rl.max_extra_groups=0"])
    on = load_config(None, [f"run_dir={tmp_path}", "rl.steps=3", "rl.prompts_per_step=4",
                            "rl.max_extra_groups=2"])
    batches = forecast.rl_draws(on, problems, 3)
    assert forecast.rl_worst_case(off, problems, 3) == [p for b in batches for p in b]
    bound = forecast.rl_worst_case(on, problems, 3)
    assert len(bound) == 3 * (4 + 2)
    stream = ReplacementStream(problems, on.seed)
    for step, batch in enumerate(batches):
        part = bound[step * 6:(step + 1) * 6]
        assert part[:4] == batch
        assert part[4:] == stream.draw(2, {p.id for p in batch})
        assert not {p.id for p in part[4:]} & {p.id for p in batch}
