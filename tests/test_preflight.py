"""Pre-flight: every stage stops before any paid call or device work, in one line, with the fix.

Each case runs the real CLI entry point, `exectune_jax.cli.main`, as `exectune` calls it: exit
code 2, one line on stderr, no traceback, and nothing in the ledger (no call was paid for). The
cases run it in this process; one runs it in a fresh process, as a user would, where nothing else
(no library's start-up chatter, no traceback) may reach stderr either.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from exectune_jax import cli, preflight
from exectune_jax.config import load_config

REPO = Path(__file__).resolve().parents[1]
UNSET = "EXECTUNE_PREFLIGHT_UNSET_KEY"
SMALL_TASK = "task.options={n_train: 16, n_validation: 4, n_test: 4}"


def exectune_process(*args: str) -> subprocess.CompletedProcess:
    """The CLI in a fresh interpreter, with one CPU device, as a user runs it."""
    base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", UNSET)}
    base.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "exectune_jax.cli", *args], cwd=REPO, env=base,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def exectune(capsys, monkeypatch):
    """`cli.main(args)` in this process, its exit code and output as a finished process's."""
    monkeypatch.delenv(UNSET, raising=False)
    monkeypatch.chdir(REPO)  # where the relative --config paths below live

    def run(*args: str) -> subprocess.CompletedProcess:
        environ = dict(os.environ)  # the CLI's process-wide setup stays with this call
        try:
            code = cli.main(list(args))
        finally:
            os.environ.clear()
            os.environ.update(environ)
        out = capsys.readouterr()
        return subprocess.CompletedProcess(["exectune", *args], code, out.out, out.err)

    return run


def refused(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """The one stderr line of a refused stage, after checking how it was refused."""
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def assert_nothing_paid(run_dir: Path) -> None:
    ledger = run_dir / "ledger.jsonl"
    assert not ledger.exists() or ledger.read_text() == ""
    assert not (run_dir / "calls.sqlite").exists()


def write_gsm8k(root: Path, n_train: int, n_test: int = 4) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        with (root / f"{split}.jsonl").open("w") as f:
            for i in range(n):
                f.write(json.dumps({"question": f"Ann has {i} apples and buys 2. How many?",
                                    "answer": f"{i} + 2 = <<{i}+2={i + 2}>>{i + 2}\n#### {i + 2}"})
                        + "\n")
    return root


def test_missing_model_dir_names_the_field_and_the_download_and_import_commands(exectune,
                                                                               tmp_path):
    line = refused(exectune("sft", f"run_dir={tmp_path / 'run'}",
                            f"model.path={tmp_path / 'models' / 'Qwen3-1.7B'}"),
                   "model.path", "no such directory", "hf download ORG/Qwen3-1.7B --local-dir")
    assert str(tmp_path / "models" / "Qwen3-1.7B") in line
    assert f"exectune import FILE.gguf {tmp_path / 'models' / 'Qwen3-1.7B'}" in line


def test_model_dir_without_weights_or_tokenizer_is_refused(exectune, tmp_path):
    model = tmp_path / "guide"
    model.mkdir()
    (model / "config.json").write_text("{}")
    refused(exectune("sft", f"run_dir={tmp_path / 'run'}", f"model.path={model}"),
            "model.path", "weights (*.safetensors)", "tokenizer files", "hf download")


def test_unset_core_key_stops_sampling_before_the_teacher_is_paid(exectune, tmp_path):
    run_dir = tmp_path / "run"
    refused(exectune("sample", f"run_dir={run_dir}", SMALL_TASK, f"api.core.api_key_env={UNSET}"),
            f"api.core.api_key_env names {UNSET}", "not set", f"export {UNSET}")
    assert_nothing_paid(run_dir)


def test_unpriced_model_names_the_price_table_option(exectune, tmp_path):
    run_dir = tmp_path / "run"
    refused(exectune("eval", f"run_dir={run_dir}", SMALL_TASK, "api.core.model=unpriced-model"),
            "api.core.model 'unpriced-model'", "no price", "api.prices=FILE")
    assert_nothing_paid(run_dir)


def test_small_gsm8k_file_leaves_an_empty_train_split_and_is_refused(exectune, tmp_path):
    data = write_gsm8k(tmp_path / "gsm8k", n_train=150)  # all 150 rows go to n_validation=200
    run_dir = tmp_path / "run"
    refused(exectune("sample", f"run_dir={run_dir}", "task.name=gsm8k",
                     f"task.options={{path: {data}}}"),
            "task gsm8k", "train split", "empty", "task.options.n_validation")
    assert_nothing_paid(run_dir)


def test_empty_eval_split_is_refused(exectune, tmp_path):
    run_dir = tmp_path / "run"
    refused(exectune("eval", f"run_dir={run_dir}", "task.options={n_test: 0}"),
            "task arith", "the test split", "empty")
    assert_nothing_paid(run_dir)


@pytest.mark.parametrize("override,field", [("sft.batch_size=0", "sft.batch_size"),
                                            ("sft.steps=-5", "sft.steps"),
                                            ("sft.held_out=1.0", "sft.held_out"),
                                            ("rl.top_p=0", "rl.top_p")])
def test_out_of_range_numbers_name_the_field_and_its_range(exectune, tmp_path, override, field):
    refused(exectune("sft", f"run_dir={tmp_path}", override), f"`{field}`", "must be in")


def test_run_dir_that_is_a_file_is_refused(exectune, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.write_text("not a directory")
    refused(exectune("sample", f"run_dir={run_dir}"), "run_dir", "is a file")


def test_missing_sft_data_says_to_run_sampling_first(exectune, tmp_path):
    refused(exectune("sft", f"run_dir={tmp_path}", SMALL_TASK), "sft data", "not found",
            "exectune sample")


@pytest.mark.parametrize("topology,extra", [("1xh100", "cuda"), ("tpu-v5e-8", "tpu")])
def test_accelerator_topology_on_cpu_names_the_missing_install(exectune, tmp_path, topology, extra):
    refused(exectune("rl", "--config", f"configs/{topology}.yaml", f"run_dir={tmp_path}"),
            "only CPU devices", f"pip install 'exectune-jax[{extra}]'")


def test_a_refusal_in_a_fresh_process_is_exit_code_2_and_one_line_on_stderr(tmp_path):
    """As a user runs it: the interpreter's exit code, and stderr holds the one line only."""
    refused(exectune_process("rl", "--config", "configs/1xh100.yaml", f"run_dir={tmp_path}"),
            "only CPU devices", "pip install 'exectune-jax[cuda]'")


def test_wandb_missing_names_the_extra(exectune, tmp_path, monkeypatch):
    """With wandb not importable, `metrics.wandb` is refused before the stage starts."""
    monkeypatch.setitem(sys.modules, "wandb", None)
    refused(exectune("rl", f"run_dir={tmp_path}", "metrics.wandb=proj"),
            "metrics.wandb=proj", "pip install 'exectune-jax[wandb]'")


def test_stage_endpoints_follow_what_the_stage_calls():
    cfg = load_config(None, ["api.follow_check=trace"])
    assert preflight.endpoints(cfg, "sample") == ["teacher", "core"]
    assert preflight.endpoints(cfg, "sample", unfiltered=True) == ["teacher"]
    assert preflight.endpoints(cfg, "eval") == ["core", "core_strong"]
    assert preflight.endpoints(cfg, "sft") == []
    followed = load_config()  # the judge reads every guided execution
    assert preflight.endpoints(followed, "sample") == ["teacher", "core", "judge"]
    assert preflight.endpoints(followed, "sample", unfiltered=True) == ["teacher"]
    assert preflight.endpoints(followed, "eval") == ["core", "judge", "core_strong"]
    several = load_config(None, ["api.follow_check=trace", "eval.cores=[core, core_next]"])
    assert preflight.endpoints(several, "eval") == ["core", "core_next", "core_strong"]
    moved = load_config(None, ["api.follow_check=trace", "eval.cores=[core_next]", "eval.core_strong=false"])
    assert preflight.endpoints(moved, "eval") == ["core_next"]  # the old core is not called
    judged = load_config(None, ["api.follow_check=trace", "rl.weights={judge: 1.0}", "api.judge=null"])
    assert preflight.endpoints(judged, "rl") == ["core", "judge"]
    with pytest.raises(preflight.PreflightError, match="api.judge is not set"):
        preflight.endpoint_ready(judged, "judge")


def test_only_the_override_weights_the_judge():
    """preflight reads `rl.weights.judge` alone: it holds while no preset weights the judge."""
    from exectune_jax.train import rewards

    assert not any(spec.uses_judge for spec in rewards.PRESETS.values())
    for preset in rewards.PRESETS:
        for weights in ({}, {"judge": 0.5}, {"judge": 0.0}):
            cfg = load_config(None, [f"rl.preset={preset}", f"rl.weights={weights}"])
            assert preflight.reward_judged(cfg) == rewards.make_spec(preset, weights).uses_judge
