"""Both notebooks run top to bottom in a fresh kernel on the embedded default, at tiny sizes.

Sizes come in the way papermill would pass them: a cell injected after the one tagged
"parameters". The kernel is this interpreter (a kernelspec installed into a temporary prefix), with
one CPU device as a user has, and no API key in its environment.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

TINY = [
    "task.options={n_train: 24, n_validation: 4, n_test: 6}",
    "sample.n_problems=6",
    "sample.proposals=2",
    "sft.steps=2",
    "sft.batch_size=4",
    "sft.eval_every=0",
    "sft.base_guide={hidden_size: 32, intermediate_size: 64, num_layers: 1, "
    "num_heads: 2, num_kv_heads: 1, warmup_steps: 2, warmup_batch_size: 2}",
    "rl.steps=1",
    "rl.group_size=2",
    "rl.prompts_per_step=2",
    "rl.micro_batch=4",
    "rl.core_only_samples=1",
    "rl.held_out=0",
    "rl.max_new_tokens=32",
    "eval.n_problems=6",
    "eval.max_new_tokens=32",
    "metrics.progress=false",
]
KEY_ENVS = ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "HF_TOKEN")


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """Environment for a python3 kernel that runs this interpreter, found via JUPYTER_PATH."""
    prefix = tmp_path_factory.mktemp("kernel")
    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--prefix", str(prefix),
                    "--name", "python3"], check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS" and k not in KEY_ENVS}
    env["JUPYTER_PATH"] = str(prefix / "share" / "jupyter")
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def with_parameters(nb, **values):
    """The notebook with a cell assigning `values` right after its "parameters" cell."""
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    source = "\n".join(f"{k} = {v!r}" for k, v in values.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(index + 1, cell)
    return nb


def execute(name: str, workdir: Path, env: dict, **values):
    nb = with_parameters(nbformat.read(REPO / "notebooks" / name, as_version=4), **values)
    old = os.environ.copy()
    os.environ["JUPYTER_PATH"] = env["JUPYTER_PATH"]  # where the client looks up the kernelspec
    try:
        NotebookClient(nb, kernel_name="python3", timeout=600,
                       resources={"metadata": {"path": str(workdir)}}).execute(env=env)
    finally:
        os.environ.clear()
        os.environ.update(old)
    return nb


def outputs(nb) -> str:
    """Every text the notebook showed: streams, results and displayed Markdown."""
    texts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            texts.append(out.get("text", ""))
            data = out.get("data", {})
            texts += [data.get("text/plain", ""), data.get("text/markdown", "")]
    return "\n".join(texts)


def steps(metrics: Path) -> list[int]:
    return [json.loads(line)["step"] for line in metrics.read_text().splitlines()
            if "loss" in json.loads(line)]


def test_quickstart_runs_the_demo_shows_results_and_loads_the_export_with_transformers(
        kernel_env, tmp_path):
    nb = execute("quickstart.ipynb", tmp_path, kernel_env, OVERRIDES=TINY)
    shown = outputs(nb)
    out = tmp_path / "runs" / "quickstart"
    assert steps(out / "sft" / "metrics.jsonl") == [1, 2]  # the tiny sizes were used
    assert "| exectune |" in shown  # the method table, displayed as Markdown
    assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    assert (out / "hf_guide" / "README.md").exists() and "model.safetensors" in shown
    assert "format:" in shown and "core + guide" in shown
    assert "installed exectune-jax" not in shown  # the install cell is a no-op when importable


def test_real_api_notebook_falls_back_to_the_simulated_endpoints_without_a_key(kernel_env,
                                                                              tmp_path):
    nb = execute("real_api.ipynb", tmp_path, kernel_env, OFFLINE_SIZES=TINY)
    shown = outputs(nb)
    run_dir = tmp_path / "runs" / "real_api_offline"
    assert "no ANTHROPIC_API_KEY found" in shown
    assert steps(run_dir / "sft" / "metrics.jsonl") == [1, 2]
    assert "| exectune |" in shown and "USD" in shown
    assert (run_dir / "hf_guide" / "config.json").exists()
