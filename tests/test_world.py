"""The frozen world: one versioned spec whose hash changes with any value and only then, and the
other worlds a run may name by overriding some of its values."""

import dataclasses
import json
import subprocess
import sys

import pytest

from exectune_jax.sim import models
from exectune_jax.world import following
from exectune_jax.world import (HABIT_RATE, SINCE_V2, WORLD, WORLD_V2, WORLD_V3, WORLDS, CoreProfile, WorldSpec,
                                summary_of, value_of, world_from)


def test_world_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        WORLD.follow_compound = 0.9


def test_hash_is_stable_across_processes_and_moves_with_any_value():
    other = subprocess.run([sys.executable, "-c", "from exectune_jax.world import WORLD; print(WORLD.hash)"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert other == WORLD.hash == WorldSpec().hash
    changed = [dataclasses.replace(WORLD, follow_compound=0.56),
               dataclasses.replace(WORLD, core=CoreProfile(1.11, 0.09, 0.03, 0.004)),
               dataclasses.replace(WORLD, teacher_habit=(("atomic", 0.2), *WORLD.teacher_habit[1:]))]
    assert len({WORLD.hash, *(w.hash for w in changed)}) == 4
    assert WORLD.summary() == {"version": WORLD.version, "hash": WORLD.hash}


def test_fields_added_after_version_2_leave_its_hash_alone_at_its_behaviour_and_move_it_otherwise():
    assert WORLD_V2.hash == "35716ebe7bfb5013"  # version 2's published hash (docs/world.md)
    assert world_from({"version": 2}) == WORLD_V2 and world_from({"version": 3}) == WORLD_V3 and WORLDS["4"] is WORLD
    assert set(SINCE_V2) <= {f.name for f in dataclasses.fields(WorldSpec)}
    assert all(getattr(WORLD_V2, k) == v for k, v in SINCE_V2.items())
    others = [world_from({"version": 2, "core_announces_aside": False}),
              world_from({"version": 2, "judge_false_yes": 0.1}), world_from({"version": 2, "judge_false_no": 0.1}),
              world_from({"version": 2, "judge_false_yes": 0.2}), world_from({"version": 2, "core_recovers": 0.5}),
              world_from({"version": 2, "named_op_value": 0.5})]
    assert len({WORLD_V2.hash, *(w.hash for w in others)}) == 7
    assert all(w.version == "2" for w in others)


def test_version_3_is_version_2_with_the_mechanisms_its_validation_run_chose_and_its_own_hash():
    assert WORLD_V3.version == "3" and WORLD_V3.hash == "f40318248245aa37"  # docs/world.md
    moved = {k for k in SINCE_V2 if getattr(WORLD_V3, k) != SINCE_V2[k]}
    assert moved == {"core_announces_aside", "core_recovers", "named_op_value", "judge_false_no"}
    assert (WORLD_V3.core_recovers, WORLD_V3.named_op_value, WORLD_V3.judge_false_yes, WORLD_V3.judge_false_no) == (
        1.0, 0.5, 0.0, 0.04)
    back = world_from({k: SINCE_V2[k] for k in moved}, WORLD_V3)
    assert back.hash != WORLD_V2.hash and dataclasses.replace(back, version="2") == WORLD_V2


def test_version_4_is_version_3_with_the_habit_rate_its_rule_gives_and_its_own_hash():
    assert WORLD.version == "4" and WORLD.hash == "d1d6b02b454ade3d"  # docs/world.md
    assert {f.name for f in dataclasses.fields(WorldSpec) if getattr(WORLD, f.name) != getattr(WORLD_V3, f.name)
            } == {"version", "teacher_habit"}
    assert value_of(WORLD, HABIT_RATE) == 0.15 and value_of(WORLD_V3, HABIT_RATE) == 0.8
    assert world_from({HABIT_RATE: 0.8}).teacher_habit == WORLD_V3.teacher_habit


def test_the_default_habit_rate_is_what_the_rule_reads_off_gsm8ks_training_solutions(gsm8k_dir):
    from exectune_jax.sim.calibrate import habit_anchor

    rule = habit_anchor(str(gsm8k_dir / "train.jsonl"))[1]
    assert rule.endswith(f"teacher_habit_rate={value_of(WORLD, HABIT_RATE):.2f}")


def test_simulated_models_read_their_numbers_from_the_world():
    core, strong, teacher = models.get("sim-core"), models.get("sim-core-strong"), models.get("sim-teacher")
    assert core.world is strong.world is teacher.world is WORLD
    assert core.profile == WORLD.core and strong.profile == WORLD.core_strong
    assert core.solo_rate(0) == WORLD.success_ceil and core.solo_rate(40) == WORLD.success_floor


def test_the_habit_rate_sets_the_compound_share_and_keeps_the_other_styles_proportions():
    assert dict(world_from({HABIT_RATE: 0.4}).teacher_habit) == pytest.approx(
        {"atomic": 0.3, "compound": 0.4, "verbose": 0.09, "vague": 0.09, "wrong": 0.06, "leak": 0.06})
    none = dict(world_from({HABIT_RATE: 0.0}).teacher_habit)
    assert none["compound"] == 0.0 and none["atomic"] == pytest.approx(0.5)
    assert sum(none.values()) == pytest.approx(1)
    assert world_from({HABIT_RATE: 0.15}) == WORLD  # the default's own share: the default world


def test_an_override_makes_another_world_under_another_hash_and_the_summary_says_so():
    other = world_from({"follow_compound": 0.25, "core": {"slope": 0.1}})
    assert (other.follow_compound, other.core.slope, other.core.flip) == (0.25, 0.1, WORLD.core.flip)
    assert other.hash != WORLD.hash and other.version == WORLD.version
    assert world_from({"follow_compound": WORLD.follow_compound}).hash == WORLD.hash
    assert summary_of({"follow_compound": 0.25, "core": {"slope": 0.1}}) == {
        "version": WORLD.version, "hash": other.hash,
        "overrides": {"follow_compound": 0.25, "core": {"slope": 0.1}}}
    mix = {"atomic": 0.6, "compound": 0.1, "verbose": 0.1, "vague": 0.1, "wrong": 0.1}
    assert world_from({"teacher_revise": mix}).teacher_revise == tuple(mix.items())
    assert models.get("sim-core", other).world is other and models.get("sim-teacher", other).world is other
    assert models.get("sim-judge", other).world is other


@pytest.mark.parametrize("overrides, needle", [
    ({"follow_compund": 0.3}, "`w.follow_compund` is not a value of the simulated world"),
    ({"follow_compound": 1.5}, "`w.follow_compound` is 1.5; it must be in [0, 1]"),
    ({"max_step_words": 2.5}, "`w.max_step_words` must be an integer"),
    ({"core": {"slop": 0.1}}, "`w.core.slop` is not a value of a core profile"),
    ({"teacher_revise": {"atomic": 1.0}}, "`w.teacher_revise` must map each of atomic, compound"),
    ({HABIT_RATE: 0.4, "teacher_habit": {}}, "both set the habit mix"),
    ({"success_floor": 0.99}, "`w.success_floor` (0.99) is above `w.success_ceil`"),
    ({"version": "1"}, "`w.version` is '1'; the worlds are versions 2, 3"),
    ({"core_announces_aside": 0}, "`w.core_announces_aside` must be true or false"),
    ({"judge_false_yes": 1.5}, "`w.judge_false_yes` is 1.5; it must be in [0, 1]"),
    ({"judge_false_no": True}, "`w.judge_false_no` must be a number"),
    ({"core_next_follow": {"merged": 0.5}}, "`w.core_next_follow` must map some of atomic, prose"),
    ({"core_next_follow": {"atomic": 2}}, "`w.core_next_follow.atomic` is 2; it must be in [0, 1]"),
])
def test_a_bad_override_is_one_line_naming_its_key(overrides, needle):
    with pytest.raises(ValueError) as e:
        world_from(overrides, prefix="w.")
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_the_next_core_reads_steps_by_its_own_follow_profile_and_its_values_move_the_hash():
    own = following(WORLD, "core_next")
    assert [getattr(own, f"follow_{k}") for k, _ in WORLD.core_next_follow] == [p for _, p in WORLD.core_next_follow]
    assert following(WORLD, "core") is WORLD and following(WORLD, "core_strong") is WORLD
    moved = [world_from({"core_next_follow": {"compound": 0.5}}), world_from({"core_next": {"slope": 0.1}})]
    assert dict(moved[0].core_next_follow)["compound"] == 0.5 and moved[0].follow_compound == WORLD.follow_compound
    assert len({WORLD.hash, *(w.hash for w in moved)}) == 3


def test_version_3s_judge_rule_adds_only_the_flips_its_reading_lacks():
    from exectune_jax.sim.calibrate import TARGET_FALSE_NO, TARGET_FALSE_YES, judge_lines, rule_rate

    assert rule_rate(0.868, TARGET_FALSE_YES) == 0.0  # its reading already errs past the target
    assert rule_rate(0.0, TARGET_FALSE_NO) == 0.04 and rule_rate(0.0, TARGET_FALSE_YES) == 0.15
    assert rule_rate(0.1, 0.15) == 0.06  # 0.1 + 0.9 * 0.0556 = 0.15
    # 3 not followed (2 called followed), 4 followed (all called followed)
    lines = judge_lines([("yes", False), ("yes", False), ("no", False)] + [("yes", True)] * 4)
    assert "not followed called followed 0.667, followed called not 0.000" in lines[1]
    assert lines[1].endswith("judge_false_yes=0.0, judge_false_no=0.04")


def test_the_habit_anchor_counts_folded_and_separate_products_of_the_questions_numbers(tmp_path):
    from exectune_jax.sim.calibrate import habit_anchor, solution_habit_sites as sites

    question = "A box holds 12 pens and Ann buys 3 boxes and 5 loose pens. How many pens?"
    assert sites(question, "Boxes: <<3*12+5=41>>41 pens.\n#### 41") == {"folded": 1}
    assert sites(question, "<<3*12=36>>36 pens in boxes.\n<<36+5=41>>41.\n#### 41") == {"separate": 1}
    # the product's result is not what the next calculation uses: no site
    assert sites(question, "<<3*12=36>>36.\n<<12+5=17>>17.\n#### 17") == {}
    # 4 is not one of the question's numbers, so neither product is a site
    assert sites(question, "<<4*12+5=53>>53.\n<<4*3=12>>12.\n<<12-1=11>>11\n#### 11") == {}
    assert sites(question, "<<3 boxes=3>>3.\n<<3*12=36>>36\n#### 36") == {"unparsed": 1}

    rows = [{"question": question, "answer": a} for a in
            ("<<3*12+5=41>>41\n#### 41", "<<3*12=36>>36\n<<36+5=41>>41\n#### 41", "<<12*3-5=31>>31\n#### 31")]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = habit_anchor(str(path))
    assert lines[0].endswith("folded 2, separate 1, annotations not parsed 0")
    assert lines[1] == "folded share 0.6667; the rule gives teacher_habit_rate=0.65"
