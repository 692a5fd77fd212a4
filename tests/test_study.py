"""`exectune study`: mean ± sd per row over seeds, per-seed and pooled paired tests, read back
from each seed's results.json."""

import json

import pytest

from exectune_jax import study
from exectune_jax.cli import main
from exectune_jax.errors import UserError
from exectune_jax.evaluate import mcnemar_exact

WORLD = {"version": "2", "hash": "abc"}


def results(acc_core: float, acc_ex: float, pairs: list[int], world=WORLD) -> dict:
    return {"world": world, "split": "test", "problems": 10, "rows": [
        {"method": "core_only", "n": 10, "accuracy": acc_core, "executability": None,
         "usd_per_problem": 0.002, "discordant_vs_exectune": pairs},
        {"method": "exectune", "n": 10, "accuracy": acc_ex, "executability": 0.5,
         "usd_per_problem": 0.001, "discordant_vs_exectune": None},
    ]}


def test_rows_are_mean_and_sd_over_seeds_and_the_pooled_test_sums_the_discordant_pairs():
    doc = study.aggregate({0: results(0.6, 0.8, [3, 1]), 1: results(0.7, 0.9, [4, 2])})
    core, ex = doc["rows"]
    assert core["accuracy"]["mean"] == pytest.approx(0.65)
    assert core["accuracy"]["sd"] == pytest.approx(0.0707107, rel=1e-5)
    assert core["executability"] is None and ex["executability"]["sd"] == 0.0
    assert core["mcnemar_p_per_seed"] == [mcnemar_exact(3, 1), mcnemar_exact(4, 2)]
    assert core["pooled"] == {"exectune_right_other_wrong": 7, "exectune_wrong_other_right": 3,
                              "mcnemar_p": mcnemar_exact(7, 3)}
    assert "pooled" not in ex and doc["seeds"] == [0, 1]
    assert "| core_only | 65.0 ± 7.1 | – | 0.002000 ± 0.000000 | 0.625, 0.688 | 7 / 3 |" in study.table(doc)


def test_seeds_from_other_worlds_or_with_missing_rows_are_refused():
    with pytest.raises(UserError, match="different worlds"):
        study.aggregate({0: results(0.6, 0.8, [1, 1]), 1: results(0.6, 0.8, [1, 1], {"version": "3"})})
    short = results(0.6, 0.8, [1, 1])
    short["rows"] = short["rows"][1:]
    with pytest.raises(UserError, match="core_only is missing for seeds \\[1\\]"):
        study.aggregate({0: results(0.6, 0.8, [1, 1]), 1: short})


def test_the_command_reads_finished_seeds_back_and_names_bad_seed_lists(tmp_path, capsys):
    for seed, doc in ((0, results(0.6, 0.8, [3, 1])), (2, results(0.7, 0.9, [4, 2]))):
        (tmp_path / f"seed-{seed}").mkdir()
        (tmp_path / f"seed-{seed}" / "results.json").write_text(json.dumps(doc))
    assert main(["study", f"run_dir={tmp_path}", "--seeds", "0,2"]) == 0  # no demo reruns
    saved = json.loads((tmp_path / "study.json").read_text())
    assert saved["seeds"] == [0, 2] and (tmp_path / "study.md").read_text() == study.table(saved)
    capsys.readouterr()
    assert main(["study", f"run_dir={tmp_path}", "--seeds", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "two or more distinct seeds" in err
