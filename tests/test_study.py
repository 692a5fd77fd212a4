"""`exectune study`: mean ± sd per row over seeds, per-seed and pooled paired tests, read back
from each seed's results.json."""

import json

import pytest

from exectune_jax.cli import main
from exectune_jax.config import RlConfig
from exectune_jax.errors import UserError
from exectune_jax.evaluate import mcnemar_exact
from exectune_jax.train.rewards import make_spec
from exectune_jax.study import ablations, across_seeds, lambdas, rl_validation, tables
from exectune_jax.study import sweep as sensitivity

WORLD = {"version": "2", "hash": "abc"}


def results(acc_core: float, acc_ex: float, pairs: list[int], world=WORLD) -> dict:
    return {"world": world, "split": "test", "problems": 10, "rows": [
        {"method": "core_only", "n": 10, "accuracy": acc_core, "executability": None,
         "usd_per_problem": 0.002, "discordant_vs_exectune": pairs},
        {"method": "exectune", "n": 10, "accuracy": acc_ex, "executability": 0.5,
         "usd_per_problem": 0.001, "discordant_vs_exectune": None},
    ]}


def test_rows_are_mean_and_sd_over_seeds_and_the_pooled_test_sums_the_discordant_pairs():
    doc = across_seeds.aggregate({0: results(0.6, 0.8, [3, 1]), 1: results(0.7, 0.9, [4, 2])})
    core, ex = doc["rows"]
    assert core["accuracy"]["mean"] == pytest.approx(0.65)
    assert core["accuracy"]["sd"] == pytest.approx(0.0707107, rel=1e-5)
    assert core["executability"] is None and ex["executability"]["sd"] == 0.0
    assert core["mcnemar_p_per_seed"] == [mcnemar_exact(3, 1), mcnemar_exact(4, 2)]
    assert core["pooled"] == {"exectune_right_other_wrong": 7, "exectune_wrong_other_right": 3,
                              "mcnemar_p": mcnemar_exact(7, 3)}
    assert "pooled" not in ex and doc["seeds"] == [0, 1]
    assert core["discordant_per_seed"] == [[3, 1], [4, 2]]
    assert ("| core_only | 65.0 ± 7.1 (60.0, 70.0) | – | 0.002000 ± 0.000000 | 3 / 1, 0.625; "
            "4 / 2, 0.688 | 7 / 3 |" in tables.table(doc))


def test_seeds_from_other_worlds_or_with_missing_rows_are_refused():
    with pytest.raises(UserError, match="different worlds"):
        across_seeds.aggregate({0: results(0.6, 0.8, [1, 1]), 1: results(0.6, 0.8, [1, 1], {"version": "3"})})
    short = results(0.6, 0.8, [1, 1])
    short["rows"] = short["rows"][1:]
    with pytest.raises(UserError, match="core_only is missing for seeds \\[1\\]"):
        across_seeds.aggregate({0: results(0.6, 0.8, [1, 1]), 1: short})


def test_the_command_reads_finished_seeds_back_and_names_bad_seed_lists(tmp_path, capsys):
    for seed, doc in ((0, results(0.6, 0.8, [3, 1])), (2, results(0.7, 0.9, [4, 2]))):
        (tmp_path / f"seed-{seed}" / ablations.ABLATIONS).mkdir(parents=True)
        (tmp_path / f"seed-{seed}" / "results.json").write_text(json.dumps(doc))
        ablated = results(0.6, 0.7, [1, 2])
        ablated["rows"] = [{**ablated["rows"][0], "method": m} for m in ablations.ABLATION_GUIDES] + ablated["rows"][1:]
        (tmp_path / f"seed-{seed}" / ablations.ABLATIONS / "results.json").write_text(json.dumps(ablated))
    assert main(["study", f"run_dir={tmp_path}", "--seeds", "0,2"]) == 0  # no demo reruns
    saved = json.loads((tmp_path / "study.json").read_text())
    assert saved["seeds"] == [0, 2] and (tmp_path / "study.md").read_text() == tables.table(saved)
    assert [r["method"] for r in saved["ablations"]["rows"]] == [*ablations.ABLATION_GUIDES, "exectune"]
    assert saved["ablations"]["rows"][0]["pooled"]["exectune_wrong_other_right"] == 4
    assert "## Ablations" in tables.table(saved) and (tmp_path / tables.STUDY_PLOT).stat().st_size
    assert [r["method"] for r in across_seeds.all_rows(saved)] == ["core_only", "exectune", *ablations.ABLATION_GUIDES]
    assert main(["study", f"run_dir={tmp_path}", "--seeds", "0,2", "--no-ablations"]) == 0
    saved = json.loads((tmp_path / "study.json").read_text())
    assert "ablations" not in saved and "## Ablations" not in tables.table(saved)
    partial = tmp_path / "seed-0" / ablations.ABLATIONS / "results.json"
    assert ablations.ablations_complete(partial)  # an earlier version's eval, without (c), is not
    doc = json.loads(partial.read_text())
    partial.write_text(json.dumps({**doc, "rows": [r for r in doc["rows"] if r["method"] != "sft_answer_only"]}))
    assert not ablations.ablations_complete(partial) and not ablations.ablations_complete(tmp_path / "none.json")
    capsys.readouterr()
    assert main(["study", f"run_dir={tmp_path}", "--seeds", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "two or more distinct seeds" in err


def test_the_ablations_train_from_the_demo_guides_and_score_beside_the_demo_rows(tmp_path):
    from exectune_jax.config import Config, dump, load_config
    from exectune_jax.demo.recipe import DEMO_SIZES, sized, with_values
    from exectune_jax.train.rewards import make_spec
    from exectune_jax.layout import sft_data

    cfg = sized(with_values(Config(), {"run_dir": str(tmp_path)}), DEMO_SIZES)
    staged = ablations.ablation_configs(cfg)
    assert set(staged) == set(ablations.ABLATION_COMMANDS) == {
        s for phase in ablations.ABLATION_PHASES for chain in phase for s in chain}
    outcome, base = staged["rl_outcome"].rl, staged["rl_from_base"].rl
    assert outcome.init == str(tmp_path / "sft" / "guide") and base.init == str(tmp_path / "base_guide")
    spec = make_spec(outcome.preset, outcome.weights)
    assert {t for t, w in spec.weights.items() if w > 0} == {"success"} and spec.gate
    assert make_spec(base.preset, base.weights) == make_spec("exectune")
    answer_only = staged["sample_answer_only"].sample
    assert not answer_only.require_followed and answer_only.max_cost_vs_core is None
    assert answer_only.out == "sample_answer_only"
    assert staged["sft_answer_only"].sft.name == "sft_answer_only"
    assert sft_data(staged["sft_answer_only"]) == tmp_path / "sample_answer_only" / "accepted.jsonl"
    # the demo's own acceptance, untouched: followed, at no more than the core's own cost
    assert cfg.sample.out == "sample" and cfg.sample.require_followed
    assert cfg.sample.max_cost_vs_core == 1.0
    ev = staged["eval_ablations"].eval
    assert ev.out == ablations.ABLATIONS and ev.guides["outcome_rl_from_sft"] == "rl_outcome/guide"
    assert set(Config().eval.guides) < set(ev.guides) and not ev.core_strong
    assert ev.guides["sft_answer_only"] == "sft_answer_only/guide"
    for stage, config in staged.items():  # the configs survive the hand-off to the stage process
        dump(config, tmp_path / f"{stage}.yaml")
        assert load_config(tmp_path / f"{stage}.yaml") == config, stage


def test_the_sweep_covers_the_judges_error_rates_and_the_v3_mechanisms_around_the_run_s_own_world():
    from exectune_jax.world import WORLD, world_from

    added = {(name, value) for name, value, _ in sensitivity.variants({})}
    assert {("judge_false_yes", 0.15), ("judge_false_yes", 0.3), ("judge_false_no", 0.0),
            ("judge_false_no", 0.1), ("core_recovers", 0.0), ("named_op_value", 1.0)} <= added
    assert ("judge_false_no", WORLD.judge_false_no) not in added  # the run's own value is its own demo
    for name, value, overrides in sensitivity.variants({}, ["judge_false_yes"]):
        world = world_from(overrides)
        assert name == "judge_false_yes" and world.judge_false_yes == value != WORLD.judge_false_yes
        assert world.hash != WORLD.hash
    assert sensitivity.swept_names(None) == list(sensitivity.SWEEP)
    with pytest.raises(UserError, match="`?--sweep 'judge_false_maybe'"):
        sensitivity.swept_names("judge_false_maybe")


def test_the_sensitivity_sweep_runs_each_world_once_in_its_own_world_and_tabulates_one_row_each(
        tmp_path, monkeypatch, capsys):
    """`--sensitivity --quick`: the run's own world is seed 0's demo, each other world one more demo
    in its own run dir; each results.json names its own world (through the stage config's YAML
    hand-off and evaluate's recorder), finished worlds are read back, and study.json keeps the
    seeds' study beside the sweep."""
    from pathlib import Path

    from exectune_jax import demo, evaluate
    from exectune_jax.config import dump, load_config
    from exectune_jax.world import HABIT_RATE, WORLD, summary_of, world_from

    ran = []

    def fake_demo(cfg, out, quick):  # the demo, down to what its eval stage records
        staged = tmp_path / "stage.yaml"
        dump(demo.prepare(cfg, out, quick), staged)
        cfg = load_config(staged)
        ran.append((cfg.run_dir, quick))
        accuracy = cfg.sim.world.get("follow_compound", 0.55)
        doc = {**evaluate.results(cfg, {}, [], 10), "rows": results(0.6, accuracy, [3, 1])["rows"]}
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "results.json").write_text(json.dumps(doc))
        return 0

    monkeypatch.setattr(demo, "run", fake_demo)
    for seed in (0, 2):  # a seeds' study first: the sweep reuses seed 0 as the run's own world
        (tmp_path / f"seed-{seed}").mkdir()
        (tmp_path / f"seed-{seed}" / "results.json").write_text(
            json.dumps(results(0.6, 0.8, [3, 1], summary_of({}))))
    assert main(["study", f"run_dir={tmp_path}", "--seeds", "0,2", "--no-ablations"]) == 0
    assert main(["study", f"run_dir={tmp_path}", "--sensitivity", "--quick",
                 "--sweep", "follow_compound,teacher_habit_rate"]) == 0
    variants = {"teacher_habit_rate-0": {HABIT_RATE: 0.0}, "teacher_habit_rate-0.4": {HABIT_RATE: 0.4},
                "teacher_habit_rate-0.8": {HABIT_RATE: 0.8}, "follow_compound-0.25": {"follow_compound": 0.25},
                "follow_compound-0.85": {"follow_compound": 0.85}}
    dirs = {v: tmp_path / sensitivity.SENSITIVITY / v / "seed-0" for v in variants}
    assert sorted(d for d, _ in ran) == sorted(map(str, dirs.values())) and all(q for _, q in ran)
    hashes = {WORLD.hash}
    for name, overrides in variants.items():
        recorded = json.loads((dirs[name] / "results.json").read_text())["world"]
        assert recorded == summary_of(overrides) and recorded["hash"] == world_from(overrides).hash
        hashes.add(recorded["hash"])
    assert len(hashes) == 6
    saved = json.loads((tmp_path / "study.json").read_text())
    sweep = saved[sensitivity.SENSITIVITY]
    assert saved["seeds"] == [0, 2] and sweep["seeds"] == [0]  # the seeds' study kept beside it
    assert [w["world"]["hash"] for w in sweep["worlds"]][0] == WORLD.hash and len(sweep["worlds"]) == 6
    assert [w["values"] for w in sweep["worlds"]][1:] == [
        {HABIT_RATE: 0.0, "follow_compound": 0.55}, {HABIT_RATE: 0.4, "follow_compound": 0.55},
        {HABIT_RATE: 0.8, "follow_compound": 0.55}, {HABIT_RATE: 0.15, "follow_compound": 0.25},
        {HABIT_RATE: 0.15, "follow_compound": 0.85}]
    md = (tmp_path / "study.md").read_text()
    assert md == tables.table(saved) and "## Sensitivity to the world" in md and "| core_only |" in md
    for h in hashes:  # one row per world in each of the three tables
        assert md.count(f"`{h}`") == 3 + (h == WORLD.hash)  # the default's also heads the seeds' table
    assert "| 0.15 | 0.85 | `" in md and "| 85.0 |" in md  # exectune's accuracy in that world
    assert (tmp_path / sensitivity.SENSITIVITY_PLOT).stat().st_size
    points = sensitivity.sweep_points(sweep)
    assert [[x for x, _ in p] for p in points.values()] == [[0.15, 0.0, 0.4, 0.8], [0.55, 0.25, 0.85]]
    ran.clear()
    assert main(["study", f"run_dir={tmp_path}", "--sensitivity", "--sweep", "teacher_habit_rate,follow_compound"]
                ) == 0 and ran == []  # read back
    assert main(["study", f"run_dir={tmp_path}", "--seeds", "0,2", "--no-ablations"]) == 0
    assert json.loads((tmp_path / "study.json").read_text())[sensitivity.SENSITIVITY] == sweep
    stale = tmp_path / sensitivity.SENSITIVITY / "follow_compound-0.25" / "seed-0" / "results.json"
    stale.write_text(json.dumps({**json.loads(stale.read_text()), "world": summary_of({})}))
    capsys.readouterr()
    assert main(["study", f"run_dir={tmp_path}", "--sensitivity", "--sweep", "follow_compound"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"ran in world {WORLD.hash}, not the sweep's" in err


def validation_results(cells: dict[str, tuple[float, float]], split: str = "validation") -> dict:
    """One seed's validation results.json: method -> (accuracy, α)."""
    return {"world": WORLD, "split": split, "problems": 500, "rows": [
        {"method": m, "n": 500, "accuracy": acc, "accuracy_ci": [acc - 0.03, acc + 0.03],
         "executability": alpha, "executability_ci": [alpha - 0.04, alpha + 0.04]}
        for m, (acc, alpha) in cells.items()]}


POOL_ON = "rl.problems=after_sample rl.max_extra_groups=8"  # docs/rl.md's candidate, one value
POOL_SIZES = ["task.options={n_train: 2400, n_validation: 500, n_test: 500}",
              "sample.n_problems=2000"]  # 400 train problems after acceptance's


def seeds_of(*per_seed: tuple[tuple[float, float], ...]) -> dict[int, dict]:
    """Seeds 0, 1, 2 from (exectune_sft, rl_default, rl_candidate) cells."""
    return {s: validation_results(dict(zip(rl_validation.RL_VALIDATION_GUIDES, cells)))
            for s, cells in enumerate(per_seed)}


def test_the_candidate_replaces_the_default_with_higher_accuracy_in_two_seeds_and_alpha_kept():
    # the candidate is higher in seeds 0 and 2, lower in 1; its α falls by exactly 2 points in
    # seed 1 (allowed: not lower by *more* than 2); RL beats SFT in 2 seeds only as the candidate
    doc = rl_validation.validation_verdict(seeds_of(((0.900, 0.80), (0.910, 0.80), (0.920, 0.81)),
                                            ((0.900, 0.80), (0.895, 0.82), (0.890, 0.80)),
                                            ((0.900, 0.80), (0.900, 0.80), (0.904, 0.80))),
                                           [POOL_ON])
    cand = doc["candidate_vs_default"]
    assert [p["higher"] for p in cand["per_seed"]] == [True, False, True]
    assert cand["per_seed"][1]["alpha_drop_points"] == pytest.approx(2.0)
    assert (cand["higher_in"], cand["needed"], cand["alpha_ok"], cand["passes"]) == (2, 2, True, True)
    assert doc["rl_vs_sft"]["rl_default"]["higher_in"] == 1
    assert doc["rl_vs_sft"]["rl_candidate"]["higher_in"] == 2
    assert doc["verdict"] == {"candidate_replaces_default": True, "kept": "rl_candidate",
                              "rl_beats_sft": ["rl_candidate"], "kept_beats_sft": True}
    assert doc["as_written"] and doc["cells"]["1"]["rl_default"]["accuracy_ci"] == [0.865, 0.925]
    md = rl_validation.rl_validation_table(doc)
    assert "| 1 | rl_default | 500 | 89.5 [86.5, 92.5] | 82.0 [78.0, 86.0] |" in md
    assert "Verdict: the candidate replaces the default; RL beats exectune_sft (rl_candidate)" in md
    assert f"- the candidate (`{POOL_ON}`) replaces the default: **yes**" in md


def test_the_default_stays_when_the_candidate_loses_alpha_in_one_seed_or_wins_one_seed_only():
    # higher accuracy in every seed, but α 2.5 points lower in seed 2: the default stays
    alpha_lost = rl_validation.validation_verdict(seeds_of(((0.90, 0.800), (0.91, 0.800), (0.92, 0.800)),
                                                   ((0.90, 0.800), (0.91, 0.800), (0.92, 0.800)),
                                                   ((0.90, 0.800), (0.91, 0.800), (0.92, 0.775))),
                                                  [POOL_ON])
    cand = alpha_lost["candidate_vs_default"]
    assert (cand["higher_in"], cand["accuracy_ok"], cand["alpha_ok"], cand["passes"]) == (3, True, False, False)
    assert alpha_lost["verdict"]["kept"] == "rl_default"
    assert alpha_lost["verdict"]["rl_beats_sft"] == ["rl_default"]  # 3 of 3, α equal
    # one seed of three higher, ties are not higher; no RL beats SFT
    one_seed = rl_validation.validation_verdict(seeds_of(((0.90, 0.8), (0.90, 0.8), (0.91, 0.8)),
                                                 ((0.90, 0.8), (0.90, 0.8), (0.90, 0.8)),
                                                 ((0.90, 0.8), (0.91, 0.8), (0.89, 0.8))),
                                                [POOL_ON])
    assert one_seed["candidate_vs_default"]["higher_in"] == 1
    assert one_seed["verdict"] == {"candidate_replaces_default": False, "kept": "rl_default",
                                   "rl_beats_sft": [], "kept_beats_sft": False}
    assert "RL (either setting) does not beat exectune_sft" in rl_validation.rl_validation_table(one_seed)


def test_the_rl_validation_reads_finished_seeds_back_and_refuses_the_test_split(tmp_path):
    per_seed = seeds_of(*[((0.90, 0.8), (0.91, 0.8), (0.92, 0.8))] * 3)
    for seed, doc in per_seed.items():
        where = tmp_path / rl_validation.RL_VALIDATION / f"seed-{seed}" / rl_validation.RL_VALIDATION_OUT
        where.mkdir(parents=True)
        (where / "results.json").write_text(json.dumps(doc))
    assert main(["study", "--rl-validation", f"run_dir={tmp_path}", "--candidate", POOL_ON,
                 *POOL_SIZES]) == 0
    saved = json.loads((tmp_path / "rl_validation.json").read_text())  # no stage reran
    assert saved["seeds"] == [0, 1, 2] and saved["verdict"]["candidate_replaces_default"]
    assert (tmp_path / "rl_validation.md").read_text() == rl_validation.rl_validation_table(saved)
    with pytest.raises(UserError, match="test split"):
        rl_validation.validation_verdict(
            {0: validation_results({"exectune_sft": (0.9, 0.8)}, split="test")}, [POOL_ON])


def test_the_validation_stages_differ_from_the_demo_only_where_the_rule_says(tmp_path):
    from exectune_jax.config import Config, dump, load_config
    from exectune_jax.demo import recipe
    from exectune_jax.evaluate import guide_dirs

    cfg = recipe.prepare(Config(), str(tmp_path), quick=False)
    configs = rl_validation.rl_validation_configs(cfg, ["rl.max_extra_groups=8", "rl.lr=3e-5"])
    assert configs["rl"] == recipe.stage_configs(cfg)["rl"]
    assert configs["rl_candidate"] == recipe.with_values(configs["rl"], {
        "rl.name": "rl_candidate", "rl.max_extra_groups": 8, "rl.lr": 3e-5})
    ev = configs["eval_validation"].eval
    assert (ev.split, ev.n_problems, ev.core_strong, ev.out, ev.advisor_methods) == (
        "validation", None, False, "rl_validation", [])
    # the three guides alone, also after the stage's config file (which merges mappings into
    # the defaults) is read back as the stage process reads it
    dump(configs["eval_validation"], tmp_path / "eval_validation.yaml")
    read = load_config(str(tmp_path / "eval_validation.yaml"))
    for guide in {*Config().eval.guides.values(), *rl_validation.RL_VALIDATION_GUIDES.values()}:
        (tmp_path / guide).mkdir(parents=True, exist_ok=True)  # every guide of the demo's too
        (tmp_path / guide / "config.json").write_text("{}")
    assert {m: p.relative_to(tmp_path).as_posix() for m, p in guide_dirs(read)[0].items()} == {
        "exectune_sft": "sft/guide", "rl_default": "rl/guide", "rl_candidate": "rl_candidate/guide"}
    assert cfg.task.options["n_validation"] == 500 and cfg.rl.steps == 30


def test_one_candidate_value_holds_several_overrides_and_a_flow_value_keeps_its_spaces(tmp_path):
    from exectune_jax.config import dump, load_config
    from exectune_jax.demo import recipe
    from exectune_jax.study import rl_candidate

    assert rl_candidate.overrides([POOL_ON]) == ["rl.problems=after_sample",
                                                 "rl.max_extra_groups=8"]
    assert rl_candidate.overrides(["rl.weights={improve: 1, harm: 0}", "rl.lr=3e-5"]) == [
        "rl.weights={improve: 1, harm: 0}", "rl.lr=3e-5"]
    cfg = recipe.prepare(load_config(None, POOL_SIZES), str(tmp_path), quick=False)
    candidate = [*rl_candidate.overrides([POOL_ON]), "rl.weights={improve: 1, harm: 0}"]
    arm = rl_validation.rl_validation_configs(cfg, candidate)["rl_candidate"]
    # the arms share every stage up to SFT and differ in RL by the candidate alone
    default = recipe.stage_configs(cfg)["rl"]
    assert arm == recipe.with_values(default, {
        "rl.name": "rl_candidate", "rl.problems": "after_sample", "rl.max_extra_groups": 8,
        "rl.weights": {"improve": 1.0, "harm": 0.0}})
    assert arm.rl.init == default.rl.init == str(tmp_path / "sft" / "guide")  # one SFT guide
    rl_candidate.check_pool(arm)
    dump(arm, tmp_path / "rl_candidate.yaml")  # the arm survives the hand-off to its process
    assert load_config(tmp_path / "rl_candidate.yaml") == arm


@pytest.mark.parametrize("args, says", [
    ([], "give the rl.* settings it changes as --candidate KEY=VALUE"),
    (["--candidate", "rl.problem=after_sample"],
     "unknown key `rl.problem`; did you mean `rl.problems`?"),
    (["--candidate", "sft.lr=1e-3"], "only rl.* settings may differ between the arms"),
    (["--candidate", "rl.init=guides/other"], "the validation run sets `rl.init`"),
    (["--candidate", "rl.name=rl"], "the validation run sets `rl.name`"),
    (["--candidate", "rl.max_extra_groups=-1"],
     "`rl.max_extra_groups` is -1; it must be in [0, inf)"),
    (["--candidate", f"rl.advantage={RlConfig().advantage} rl.max_extra_groups={RlConfig().max_extra_groups}"],
     "leaves the RL config as the default arm's"),  # the defaults, whatever they are
    (["--candidate", "rl.problems=after_sample"],
     "`rl.problems` is 'after_sample' and leaves no problem"),
    (["--candidate", "rlproblems"], "override 'rlproblems' must look like section.key=value"),
])
def test_a_missing_or_bad_candidate_is_refused_in_one_line_before_any_stage(tmp_path, capsys, args,
                                                                            says):
    # the last but one: at the demo's sizes acceptance covers the whole train split, so the
    # pool is refused before acceptance sampling and SFT rather than at the candidate's RL
    assert main(["study", "--rl-validation", f"run_dir={tmp_path}", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err
    assert not (tmp_path / rl_validation.RL_VALIDATION).exists()


def test_a_candidate_without_rl_validation_is_refused(tmp_path, capsys):
    assert main(["study", f"run_dir={tmp_path}", "--candidate", POOL_ON]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--candidate names the second RL arm of --rl-validation" in err


def test_a_seed_whose_candidate_arm_ran_with_other_settings_is_not_read_back_under_this_one(
        tmp_path, capsys):
    from exectune_jax.config import dump, load_config
    from exectune_jax.demo import recipe
    from exectune_jax.sim.embedded import with_sim_url
    from exectune_jax.study.seeds import seed_config

    cfg = load_config(None, [f"run_dir={tmp_path}", *POOL_SIZES])
    for seed, doc in seeds_of(*[((0.90, 0.8), (0.91, 0.8), (0.92, 0.8))] * 3).items():
        out = tmp_path / rl_validation.RL_VALIDATION / f"seed-{seed}"
        (out / rl_validation.RL_VALIDATION_OUT).mkdir(parents=True)
        (out / rl_validation.RL_VALIDATION_OUT / "results.json").write_text(json.dumps(doc))
        ran = ["rl.problems=after_sample", f"rl.max_extra_groups={4 if seed == 1 else 8}"]
        seed_cfg = recipe.prepare(seed_config(cfg, seed), str(out), False)
        arm = rl_validation.rl_validation_configs(seed_cfg, ran)["rl_candidate"]
        (out / "rl_candidate").mkdir()
        # as the arm's RL stage records it: its sim endpoints at the runner's loopback server
        dump(with_sim_url(recipe.with_values(arm, {"metrics.progress": False}), "http://127.0.0.1:9"),
             out / "rl_candidate" / "config.yaml")
    command = ["study", "--rl-validation", f"run_dir={tmp_path}", *POOL_SIZES,
               "--candidate", POOL_ON]
    assert main(command) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "seed-1/rl_candidate ran with rl.max_extra_groups 4" in err
    assert not (tmp_path / "rl_validation.json").exists()
    seed_1 = tmp_path / rl_validation.RL_VALIDATION / "seed-1" / "rl_candidate" / "config.yaml"
    dump(recipe.with_values(load_config(seed_1), {"rl.max_extra_groups": 8}), seed_1)
    assert main(command) == 0
    saved = json.loads((tmp_path / "rl_validation.json").read_text())
    assert saved["candidate"] == ["rl.problems=after_sample", "rl.max_extra_groups=8"]


def test_the_arms_summaries_count_dynamic_sampling_and_core_calls_where_their_runs_logged_them():
    from exectune_jax.train.rollouts import CALL_KEYS

    new = [{"step": 1, "groups_with_spread": 1.0, "drawn_with_spread": 0.8, "groups_extra": 3,
            "groups_replaced": 2, "groups_unfilled": 0, "core_calls_paid": 30,
            "core_calls_replayed": 58, "kl": 0.0},
           {"step": 2, "groups_with_spread": 0.875, "drawn_with_spread": 0.7, "groups_extra": 8,
            "groups_replaced": 4, "groups_unfilled": 1, "core_calls_paid": 20,
            "core_calls_replayed": 100, "kl": 0.01}]
    summary = rl_validation.rl_run_summary(new)
    assert set(CALL_KEYS) <= set(rl_validation.RL_RUN_COUNTS) <= set(rl_validation.RL_RUN_KEYS)
    assert summary["groups_extra"] == {"mean": 5.5, "first": 3, "last": 8, "total": 11}
    assert summary["core_calls_paid"]["total"] == 50
    assert summary["core_calls_replayed"]["total"] == 158
    assert summary["groups_with_spread"] == {"mean": 0.9375, "first": 1.0, "last": 0.875}
    assert summary["entropy"] is None
    old = rl_validation.rl_run_summary([{"step": 1, "groups_with_spread": 0.5, "kl": 0.0}])
    md = rl_validation.rl_runs_table({"0": {"rl": old, "rl_candidate": summary}})
    header = next(line for line in md.splitlines() if line.startswith("| seed | run | steps |"))
    assert header == ("| seed | run | steps | groups_with_spread | drawn_with_spread | "
                      "groups_extra | groups_replaced | groups_unfilled | core_calls_paid | "
                      "core_calls_replayed | kl |")
    assert ("| 0 | rl_candidate | 2 | 0.938 (1 → 0.875) | 0.75 (0.8 → 0.7) | 11; 5.5 (3 → 8) |"
            in md)
    assert "| 0 | rl | 1 | 0.5 (0.5 → 0.5) | – | – |" in md
    assert "groups_extra" not in rl_validation.rl_runs_table({"0": {"rl": old}})  # an earlier run's


def lambda_results(cells: dict[str, tuple[float, float]]) -> dict:
    """One seed's λ-sweep results.json: method -> (accuracy, USD per problem)."""
    return {"world": WORLD, "split": "test", "problems": 10, "rows": [
        {"method": m, "n": 10, "accuracy": acc, "executability": None if m.startswith("core") else 0.9,
         "usd_per_problem": usd, "discordant_vs_exectune": None if m == "exectune" else [1, 1]}
        for m, (acc, usd) in cells.items()]}


LAMBDA_CELLS = {"core_only": (0.70, 0.0008), "exectune_sft": (0.90, 0.0004), "exectune": (0.92, 0.0004),
                "exectune_lambda_0": (0.93, 0.0035), "exectune_lambda_100": (0.92, 0.0004),
                "exectune_lambda_1000": (0.80, 0.0002), "core_strong": (0.87, 0.0031)}


def test_each_lambda_trains_rl_from_the_sft_guide_at_its_cost_weight_and_the_demos_is_not_retrained(tmp_path):
    from exectune_jax.config import Config, dump, load_config
    from exectune_jax.demo.recipe import prepare

    cfg = prepare(load_config(None, [f"run_dir={tmp_path}"]), None, quick=True)
    assert lambdas.own_lambda(cfg) == 100.0
    staged = lambdas.lambda_configs(cfg, [0.0, 100.0, 1000.0])
    assert set(staged) == {"rl_lambda-0", "rl_lambda-1000", "eval_lambdas"}
    for lam in (0.0, 1000.0):
        rl = staged[lambdas.stage(lam)].rl
        assert rl.init == str(tmp_path / "sft" / "guide") and rl.preset == "exectune"
        assert make_spec(rl.preset, rl.weights).weights["cost"] == lam
        assert make_spec(rl.preset, rl.weights).weights == {**make_spec("exectune").weights, "cost": lam}
    ev = staged["eval_lambdas"].eval
    assert ev.guides["exectune_lambda_0"] == "rl_lambda-0/guide"
    assert ev.guides["exectune_lambda_100"] == ev.guides["exectune"] == "rl/guide"  # the demo's guide
    assert set(Config().eval.guides) < set(ev.guides) and ev.cores == ["core"] and ev.core_strong
    assert ev.out == lambdas.LAMBDAS
    assert lambdas.lambda_phases(cfg, [0.0, 100.0, 1000.0]) == (
        (("rl_lambda-0",), ("rl_lambda-1000",)), (("eval_lambdas",),))
    for stage, config in staged.items():  # the configs survive the hand-off to the stage process
        dump(config, tmp_path / f"{stage}.yaml")
        assert load_config(tmp_path / f"{stage}.yaml") == config, stage


def test_the_lambda_study_reads_finished_seeds_back_marks_cheaper_and_better_and_draws_the_frontier(
        tmp_path, capsys):
    for seed in (0, 1):
        out = tmp_path / f"seed-{seed}"
        (out / lambdas.LAMBDAS).mkdir(parents=True)
        (out / "results.json").write_text(json.dumps(results(0.6, 0.8, [3, 1])))
        cells = {m: (acc + 0.01 * seed, usd) for m, (acc, usd) in LAMBDA_CELLS.items()}
        (out / lambdas.LAMBDAS / "results.json").write_text(json.dumps(lambda_results(cells)))
    assert main(["study", f"run_dir={tmp_path}", "--lambdas", "1000,0,100", "--seeds", "0,1"]) == 0  # no runs
    saved = json.loads((tmp_path / "study.json").read_text())[lambdas.LAMBDAS]
    assert saved["lambdas"] == [0.0, 100.0, 1000.0] and saved["own_lambda"] == 100.0
    assert [lam for lam, _ in lambdas.frontier(saved["rows"])] == [0.0, 100.0, 1000.0]
    assert [r["method"] for r in lambdas.others(saved["rows"])] == ["core_only", "exectune_sft", "core_strong"]
    # λ=0 is more accurate than core_strong but not cheaper; λ=1000 cheaper but less accurate
    assert lambdas.cheaper_and_better(saved["rows"]) == ["exectune_lambda_100"]
    md = (tmp_path / "study.md").read_text()
    assert "## The cost weight λ" in md and "| exectune_lambda_100 | 100 | 92.5 ± 0.7 |" in md
    assert md.count("| yes |") == 1 and lambdas.PARETO_PLOT in md
    assert (tmp_path / lambdas.PARETO_PLOT).read_bytes()[:4] == b"\x89PNG"
    assert main(["study", f"run_dir={tmp_path}", "--seeds", "0,1", "--no-ablations"]) == 0
    assert json.loads((tmp_path / "study.json").read_text())[lambdas.LAMBDAS] == saved  # kept
    assert not lambdas.complete(tmp_path / "seed-0" / lambdas.LAMBDAS / "results.json", [0.0, 30.0])


@pytest.mark.parametrize("args, message", [
    (["--lambdas", "100"], "two or more distinct cost weights"),
    (["--lambdas", "0,-1"], "two or more distinct cost weights"),
    (["--lambdas", "0,x"], "two or more distinct cost weights"),
    (["--lambdas", "0,100", "--sensitivity"], "run one at a time"),
    (["--sweep", "judge_false_yes"], "add --sensitivity"),
    (["--sensitivity", "--sweep", "follow_compund"], "follow_compund is not a swept world value"),
])
def test_a_bad_lambda_list_is_refused_in_one_line_before_any_stage(tmp_path, capsys, args, message):
    assert main(["study", f"run_dir={tmp_path}", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and not (tmp_path / "seed-0").exists()


def test_the_pareto_plot_writes_a_png_from_constructed_study_rows(tmp_path):
    from exectune_jax import plots

    cell = lambda mean: {"mean": mean, "sd": 0.01 * mean, "per_seed": [mean]}  # noqa: E731
    rows = [{"method": m, "accuracy": cell(acc), "usd_per_problem": cell(usd)}
            for m, (acc, usd) in LAMBDA_CELLS.items()]
    path = plots.pareto(lambdas.frontier(rows), lambdas.others(rows), tmp_path / "pareto.png", "title")
    assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 10_000
    assert plots.pareto([], rows, tmp_path / "none.png", "title") is None
