"""`exectune demo --quick` as a user runs it (a fresh process), and its determinism under faults."""

import json
from pathlib import Path

import pytest
from demo_runs import copy_finished, run_demo

from exectune_jax import evaluate
from exectune_jax.demo import recipe, report, runner
from exectune_jax.config import Config, load_config
from exectune_jax.sim.embedded import with_sim_url

pytestmark = pytest.mark.slow
# What the faulty and the batch runs take from the clean one: no API call goes into these stages,
# so they resume finished (the SFT stages check that the acceptance data they trained on is what
# the rerun sampling wrote). Sampling, both RL stages, eval and export run again.
NO_API_CALLS = ("base_guide", "sft", "sft_unfiltered")


@pytest.fixture(scope="module")
def clean_run(quick_demo):
    return quick_demo


def assert_resumed_without_api_calls(run: Path, clean: Path) -> None:
    """The SFT stages returned at once, on the very data the clean run's SFT trained on."""
    for stage in ("sample", "sample_unfiltered"):
        assert (run / stage / "accepted.jsonl").read_bytes() == \
            (clean / stage / "accepted.jsonl").read_bytes(), stage
    for stage in ("sft", "sft_unfiltered"):
        assert "already at step" in (run / "logs" / f"{stage}.log").read_text(), stage


def test_quick_demo_writes_results_plots_metrics_export_and_ledger(clean_run):
    out, proc = clean_run
    doc = json.loads((out / "results.json").read_text())
    methods = [r["method"] for r in doc["rows"]]
    assert methods == ["core_only", "base_guide", "sft_unfiltered", "exectune_sft", "advisor_rl",
                       "exectune", "exectune_next", "core_strong"]
    # the guides on the next core too, RL's guide adapted to it beside exectune_sft unadapted
    assert doc["cores"]["core_next"]["model"] == "sim-core-next"
    assert [r["method"] for r in doc["cores"]["core_next"]["rows"]] == methods[:-1]
    assert load_config(out / "rl_next" / "config.yaml").api.core.model == "sim-core-next"
    assert "on core_next (sim-core-next)" in proc.stdout and "## The guides executed by core_next" in proc.stdout
    for row in [*doc["rows"], *doc["cores"]["core_next"]["rows"]]:
        assert list(row) == list(evaluate.ROW_FIELDS)
        assert row["failed_calls"] == 0
    assert doc["skipped"] == []
    for name in ("results.md", "accuracy_vs_cost.png", "accuracy_vs_alpha.png", "rl_curves.png",
                 "ledger.jsonl"):
        assert (out / name).stat().st_size > 0, name
    for stage in ("sft", "sft_unfiltered", "advisor_rl", "rl", "rl_next"):
        assert (out / stage / "metrics.jsonl").stat().st_size > 0, stage
    assert (out / "export" / "config.json").exists()
    assert list((out / "export").glob("*.safetensors"))
    for stage in ("sample", "sample_unfiltered", "sft", "sft_unfiltered", "advisor_rl", "rl",
                  "eval"):
        assert load_config(out / stage / "config.yaml").run_dir == str(out), stage
    assert "| exectune |" in proc.stdout  # the closing table
    assert report.SMOKE_NOTE in proc.stdout  # a smoke run says so ...
    assert "criteria hold" not in proc.stdout and "[x]" not in proc.stdout  # ... and no verdict


def test_quick_demo_measures_each_follow_estimator_against_the_simulators_truth(clean_run):
    out, proc = clean_run
    study = json.loads((out / report.AGREEMENT).read_text())
    judge = study["estimators"]["judge"]
    assert study["unmatched"] == 0 and judge["decided"] > 0 and 0 < judge["agreement"] <= 1
    assert set(study["estimators"]) == {"judge", "trace"}
    guides = {"base_guide", "sft_unfiltered", "exectune_sft", "advisor_rl", "exectune"}
    assert guides <= set(study["methods"]) and all(0 <= m["followed"] <= 1 for m in study["methods"].values())
    assert "follow check against the simulator's ground truth" in proc.stdout
    assert "followed by the ground truth" in proc.stdout
    ledger = {json.loads(line)["stage"] for line in (out / "ledger.jsonl").read_text().splitlines()}
    assert {"eval.exectune.judge", "sample.core.judge"} <= ledger


def test_demo_results_are_identical_with_injected_api_faults(clean_run, tmp_path):
    """Retries and the cache make API faults invisible in the results (and the seed fixes them)."""
    out, _ = clean_run
    faulty = copy_finished(out, tmp_path / "faulty", NO_API_CALLS)
    # a hang shorter than the default 2 s fails the call the same way, in less of the suite's time
    run_demo(faulty, "sim.fault_rate=0.2", "sim.latency_ms=2", "sim.hang_s=0.2")
    ledger = [json.loads(line) for line in (faulty / "ledger.jsonl").read_text().splitlines()]
    assert ledger  # calls went through the faulty server
    assert_resumed_without_api_calls(faulty, out)
    assert (faulty / "results.json").read_text() == (out / "results.json").read_text()


def test_demo_sizes_fill_only_fields_the_user_left_at_their_defaults(tmp_path):
    cfg = load_config(None, ["sft.steps=7", f"run_dir={tmp_path}"])
    sized = recipe.prepare(cfg, str(tmp_path / "out"), quick=True)
    assert sized.sft.steps == 7
    assert sized.rl.steps == recipe.QUICK_SIZES["rl.steps"]
    assert sized.run_dir == str(tmp_path / "out")
    assert Config().rl.steps != recipe.QUICK_SIZES["rl.steps"]


def test_task_code_runs_funcs_and_a_task_the_demo_cannot_run_is_refused_in_one_line(tmp_path, capsys):
    from exectune_jax.cli import main
    from exectune_jax.errors import UserError

    assert recipe.with_task(Config(), "code").task.name == "funcs"
    assert recipe.with_task(Config(), "math").task.name == "arith"
    assert recipe.with_task(load_config(None, ["task.name=funcs"]), None).task.name == "funcs"
    with pytest.raises(UserError, match="task.name=mbpp"):
        recipe.with_task(load_config(None, ["task.name=mbpp"]), "code")
    with pytest.raises(UserError, match="task.name=gsm8k: the demo runs"):
        recipe.with_task(load_config(None, ["task.name=gsm8k"]), None)
    for command in ("demo", "study"):
        capsys.readouterr()
        named = main([command, "--task", "code", "task.name=arith", f"run_dir={tmp_path / command}"])
        err = capsys.readouterr().err  # task.name named at its default value still disagrees
        assert named == 2 and err.count("\n") == 1 and "--task code runs task.name=funcs" in err
        assert main([command, "--task", "humaneval", f"run_dir={tmp_path / command}"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--task humaneval" in err and "code (funcs)" in err
        assert not (tmp_path / command / "demo_config.yaml").exists()


def test_the_code_demo_takes_its_own_sizes_over_the_demos_and_the_users_still_win():
    code = recipe.prepare(recipe.with_task(Config(), "code"), None, quick=False)
    assert code.task.options == recipe.TASK_SIZES["funcs"]["task.options"]
    assert code.sft.steps == recipe.TASK_SIZES["funcs"]["sft.steps"] != recipe.DEMO_SIZES["sft.steps"]
    assert code.rl.max_extra_groups == 0 and code.rl.steps == recipe.TASK_SIZES["funcs"]["rl.steps"]
    assert code.sft.lr == recipe.DEMO_SIZES["sft.lr"]  # the rest as the math demo's
    math = recipe.prepare(Config(), None, quick=False)
    assert math.task.options == recipe.DEMO_SIZES["task.options"]
    assert (math.sft.steps, math.rl.steps) == (recipe.DEMO_SIZES["sft.steps"], recipe.DEMO_SIZES["rl.steps"])
    assert math.rl.max_extra_groups == Config().rl.max_extra_groups  # the code cuts stay on code
    mine = recipe.prepare(load_config(None, ["task.name=funcs", "task.options={n_train: 50}",
                                             "rl.steps=7"]), None, quick=False)
    assert mine.task.options == {"n_train": 50} and mine.rl.steps == 7
    quick = recipe.prepare(recipe.with_task(Config(), "code"), None, quick=True)
    assert quick.task.options == recipe.QUICK_SIZES["task.options"]


def test_every_stage_points_at_the_one_sim_server():
    cfg = with_sim_url(Config(), "http://127.0.0.1:1234")
    assert cfg.api.core.base_url == "http://127.0.0.1:1234/v1"
    assert cfg.api.teacher.base_url == "http://127.0.0.1:1234/v1"
    staged = recipe.stage_configs(cfg)
    assert {s for phase in recipe.phases(cfg) for chain in phase for s in chain} == set(staged)
    assert staged["advisor_rl"].rl.preset == "advisor"
    assert staged["rl"].rl.init.endswith("sft/guide")
    assert staged["sft_unfiltered"].sft.data.endswith("sample_unfiltered/accepted.jsonl")


def test_a_pretrained_guide_is_where_advisor_rl_starts_and_what_the_base_guide_row_reads(tmp_path):
    pretrained = tmp_path / "smollm2"
    cfg = recipe.prepare(load_config(None, [f"model.path={pretrained}"]), str(tmp_path / "run"),
                         quick=True)
    staged = recipe.stage_configs(cfg)
    assert staged["advisor_rl"].rl.init == str(pretrained)
    assert staged["sft"].sft.init is None and staged["sft"].model.path == str(pretrained)
    assert staged["eval"].eval.guides["base_guide"] == str(pretrained)
    assert staged["eval"].eval.guides[recipe.ADAPTED] == "rl_next/guide"
    demo = recipe.stage_configs(recipe.prepare(Config(), str(tmp_path / "run"), quick=True))
    assert demo["advisor_rl"].rl.init == str(tmp_path / "run" / "base_guide")
    assert demo["eval"].eval.guides["base_guide"] == "base_guide"


def test_the_demo_adapts_exectune_sft_to_the_next_core_and_evaluates_every_guide_on_it():
    cfg = with_sim_url(recipe.prepare(Config(), None, quick=True), "http://127.0.0.1:1234")
    assert cfg.eval.cores == ["core", "core_next"]
    staged = recipe.stage_configs(cfg)
    assert {s for phase in recipe.phases(cfg) for chain in phase for s in chain} == set(staged)
    adapt = staged["rl_next"]
    assert adapt.api.core == cfg.api.core_next and adapt.api.core.base_url == "http://127.0.0.1:1234/v1"
    assert adapt.rl.preset == "exectune" and adapt.rl.init == staged["rl"].rl.init  # from exectune_sft
    assert staged["rl"].api.core.model == "sim-core"  # the other stages keep the first core
    assert staged["eval"].eval.guides[recipe.ADAPTED] == "rl_next/guide"
    alone = recipe.prepare(load_config(None, ["api.core_next=null"]), None, quick=True)
    assert alone.eval.cores == ["core"] and "rl_next" not in recipe.stage_configs(alone)
    assert "rl_next" not in {s for phase in recipe.phases(alone) for chain in phase for s in chain}


def test_the_closing_report_shows_each_other_cores_guides_and_the_adapted_one():
    row = {"accuracy": 0.9, "executability": 0.8, "usd_per_problem": 0.0005}
    doc = {"core": "core", "cores": {"core_next": {"model": "sim-core-next", "rows": [
        {**row, "method": "core_only", "executability": None}, {**row, "method": "exectune_sft"},
        {**row, "method": "exectune_next", "accuracy": 0.95}]}}}
    lines = report.transfer_lines(doc)
    assert lines[0] == ("on core_next (sim-core-next): exectune_sft and exectune trained for core, "
                        "exectune_next is exectune_sft adapted to core_next by RL")
    assert [line.split()[0] for line in lines[1:]] == ["core_only", "exectune_sft", "exectune_next"]
    assert "α" not in lines[1] and "95.0%, α 80.0%" in lines[3]
    assert report.transfer_lines({"rows": []}) == []


def test_stage_configs_survive_the_yaml_hand_off_to_the_stage_process(tmp_path):
    from exectune_jax.config import dump

    cfg = recipe.prepare(load_config(None, ["api.core.max_tokens=300"]), str(tmp_path), quick=True)
    for stage, staged in recipe.stage_configs(with_sim_url(cfg, "http://h:1")).items():
        dump(staged, tmp_path / f"{stage}.yaml")
        assert load_config(tmp_path / f"{stage}.yaml") == staged, stage


def test_a_stage_that_fails_stops_the_demo_and_names_its_log(tmp_path):
    """A stage process that exits non-zero (here: an unknown task) ends the run with its log."""
    cfg = recipe.prepare(load_config(None, ["task.name=no_such_task"]), str(tmp_path), quick=True)
    stages = runner.Runner(recipe.stage_configs(cfg), tmp_path / "logs", show=False,
                           commands=recipe.stage_commands(cfg))
    with pytest.raises(runner.StageFailed) as failed:
        stages.run([(("sample",),)])
    assert failed.value.log == tmp_path / "logs" / "sample.log"
    assert "no_such_task" in failed.value.log.read_text()


def table_row(method, accuracy, p=None, usd=0.0004, executability=None):
    return {"method": method, "accuracy": accuracy, "mcnemar_p_vs_exectune": p,
            "usd_per_problem": usd, "executability": executability}


# executability is α (how often the core followed), not accuracy
PAPER_TABLE = [table_row("core_only", 0.70, 1e-9, usd=0.0008),
               table_row("base_guide", 0.71, 1e-8, executability=0.02),
               table_row("sft_unfiltered", 0.78, 1e-5, executability=0.18),
               table_row("exectune_sft", 0.88, 0.004, executability=0.47),
               table_row("advisor_rl", 0.72, 1e-8, executability=0.0),
               table_row("exectune", 0.93, usd=0.0003, executability=0.96)]


def test_pattern_checks_hold_for_the_papers_ordering_and_ignore_the_reference_core():
    rows = [*PAPER_TABLE, table_row("core_strong", 0.97, 0.01, usd=0.003)]
    checks = report.pattern_checks(rows)
    assert all(ok for ok, _ in checks) and len(checks) == 9
    assert "above core_strong" not in " ".join(text for _, text in checks)
    assert "core_strong alone 97.0%" in report.reference_line(rows)


def test_pattern_checks_name_each_criterion_that_fails():
    rows = [r if r["method"] != "exectune_sft" else table_row("exectune_sft", 0.91, 0.3, executability=0.5)
            for r in PAPER_TABLE]
    rows[0] = table_row("core_only", 0.70, 1e-9, usd=0.0002)
    failed = [text for ok, text in report.pattern_checks(rows) if not ok]
    assert failed == ["exectune above exectune_sft: 93.0% vs 91.0%, McNemar p = 0.3",
                      "USD per problem below core_only: 0.000300 vs 0.000200"]


@pytest.mark.parametrize("quick", [True, False])
def test_only_a_full_demo_judges_the_papers_pattern(tmp_path, quick):
    """The same table closes a --quick run as a smoke run, and a full run with the verdict."""
    (tmp_path / "results.json").write_text(json.dumps({"rows": PAPER_TABLE}))
    (tmp_path / "results.md").write_text("| method | accuracy |\n")
    summary = report.closing_summary(tmp_path, {"sample": 1.0}, 2.0, quick=quick)
    assert (report.SMOKE_NOTE in summary) is quick
    assert ("the paper's pattern:" in summary) is not quick


def test_executability_criteria_judge_alpha_not_accuracy():
    # more accurate than every row, but the core follows its strategies less than sft_unfiltered's
    rows = [r if r["method"] != "exectune" else table_row("exectune", 0.93, usd=0.0003, executability=0.10)
            for r in PAPER_TABLE]
    failed = [text for ok, text in report.pattern_checks(rows) if not ok]
    assert failed == ["executability α above sft_unfiltered: 10.0% vs 18.0%"]


def test_follow_study_lines_report_agreement_and_kappa_per_estimator():
    result = {"unmatched": 0, "estimators": {
        "judge": {"n": 10, "decided": 10, "unknown": 0, "agreement": 1.0, "kappa": 1.0},
        "trace": {"n": 10, "decided": 8, "unknown": 2, "agreement": 0.875, "kappa": None}}}
    lines = report.study_lines(result)
    assert lines[1].split() == "judge agreement 100.0%, Cohen's kappa 1.000 over 10 decided (0 unknown, left out)".split()
    assert "kappa n/a over 8 decided (2 unknown" in lines[2] and len(lines) == 3


def test_the_follow_study_gives_each_rows_true_followed_share_beside_what_each_estimator_said():
    from exectune_jax.sim.truth import study

    truth = {"a": True, "b": False, "c": False, "d": True, "e": False}
    labels = [{"method": "exectune", "digest": "a", "checks": {"judge": "yes", "trace": "yes"}},
              {"method": "exectune", "digest": "b", "checks": {"judge": "yes", "trace": "no"}},
              {"method": "exectune", "digest": "c", "checks": {"judge": "no", "trace": "unknown"}},
              {"method": "base_guide", "digest": "d", "checks": {"judge": "yes", "trace": "unknown"}},
              {"method": "base_guide", "digest": "e", "checks": {"judge": "yes", "trace": "unknown"}},
              {"method": "base_guide", "digest": "real-core", "checks": {"judge": "yes", "trace": "yes"}}]
    result = study(labels, truth)
    assert result["unmatched"] == 1
    exectune, base = result["methods"]["exectune"], result["methods"]["base_guide"]
    assert (exectune["n"], exectune["followed"]) == (3, 1 / 3)
    assert exectune["said_followed"] == {"judge": 2 / 3, "trace": 0.5}  # trace decided two
    assert base["followed"] == 0.5 and base["said_followed"] == {"judge": 1.0, "trace": None}
    lines = report.study_lines(result)
    assert any(line.split() == "exectune truth 33.3%; judge 66.7%, trace 50.0% (n = 3)".split() for line in lines)
    assert any("base_guide" in line and "trace n/a" in line for line in lines)


def _stage_totals(out: Path) -> dict[str, dict]:
    """Ledger totals summed per top-level stage (sample.teacher -> sample)."""
    stages: dict[str, dict] = {}
    for name, t in json.loads((out / "ledger_totals.json").read_text())["stages"].items():
        top = stages.setdefault(name.split(".")[0], {"calls": 0, "batch_calls": 0, "usd": 0.0})
        for k in top:
            top[k] += t[k]
    return stages


def test_batch_mode_demo_gives_the_online_results_with_batch_stages_at_half_price(clean_run, tmp_path):
    out, _ = clean_run
    batched = copy_finished(out, tmp_path / "batch", NO_API_CALLS)
    run_demo(batched, "api.mode=batch", "api.batch_poll_s=0.05", "api.batch_poll_max_s=0.2")
    assert_resumed_without_api_calls(batched, out)
    assert (batched / "results.json").read_text() == (out / "results.json").read_text()
    online, batch = _stage_totals(out), _stage_totals(batched)
    assert online.keys() == batch.keys()
    for stage, t in batch.items():
        if stage in ("sample", "eval"):
            assert t["batch_calls"] == t["calls"] == online[stage]["calls"] > 0, stage
            # cached-prefix reads vary by one prompt between runs (which stage's call came first)
            assert t["usd"] == pytest.approx(online[stage]["usd"] / 2, rel=0.01), stage
        elif stage == "sample_unfiltered":  # its proposals are the filtered run's: replays
            assert t["calls"] == t["usd"] == 0, stage
        else:  # RL answers within the loop: always online
            assert t["batch_calls"] == 0 and t["usd"] == pytest.approx(online[stage]["usd"], rel=0.01), stage
