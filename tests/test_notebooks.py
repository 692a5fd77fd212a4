"""Both notebooks run top to bottom in a fresh kernel on the embedded default, at tiny sizes,
after their install cell has installed the package from this checkout. The quickstart's demo
resumes a copy of the session's quick demo rather than training a second one.

Sizes come in the way papermill would pass them: a cell injected after the one tagged
"parameters". The kernel runs in a fresh virtual environment in which exectune_jax is NOT
importable: it sees this interpreter's packages (jax, torch, ipykernel...) through a .pth file,
as a Colab runtime has its own, and the notebook's install cell runs the user's path, pip
install -c constraints.txt -e CHECKOUT, with the checkout and `--no-deps --no-build-isolation`
(offline: the dependencies are there already). One CPU device as a user has, no API key.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from demo_runs import copy_finished
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


@pytest.fixture()
def kernel_env(tmp_path_factory):
    """A python3 kernel in a fresh venv that has this interpreter's packages but not exectune_jax."""
    root = tmp_path_factory.mktemp("kernel")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    python = root / "venv" / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    here = [p for p in sys.path if p.endswith("site-packages")]
    (Path(site) / "host_packages.pth").write_text("\n".join(here) + "\n")
    subprocess.run([str(python), "-m", "ipykernel", "install", "--prefix", str(root), "--name", "python3"],
                   check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTHONPATH") and k not in KEY_ENVS}
    env["JUPYTER_PATH"] = str(root / "share" / "jupyter")
    env["JAX_PLATFORMS"] = "cpu"
    env["PIP_NO_INDEX"] = "1"
    check = subprocess.run([str(python), "-c", "import exectune_jax"], env=env, capture_output=True, cwd=root)
    assert check.returncode != 0, "the kernel must start without exectune_jax, as a fresh runtime does"
    return env


INSTALL = {"CHECKOUT": str(REPO), "PIP_OPTIONS": ["--no-deps", "--no-build-isolation"]}


def installed_from_the_checkout(shown: str) -> bool:
    return f"installed exectune-jax from {REPO}" in shown


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
        kernel_env, tmp_path, quick_demo):
    """The notebook's demo cell finds the session's quick demo finished in its OUT (copied
    there) and resumes it: SFT returns at once and RL at its last step only writes its guide;
    sampling (from the copied call cache), eval (at the size OVERRIDES gives) and export run
    again. The cells after it read what that run wrote."""
    clean, _ = quick_demo
    out = tmp_path / "runs" / "quickstart"  # the notebook's OUT, relative to its directory
    copy_finished(clean, out, [p.name for p in clean.iterdir() if p.name != ".lock"],
                  named="runs/quickstart")
    nb = execute("quickstart.ipynb", tmp_path, kernel_env, OVERRIDES=["eval.n_problems=24"],
                 **INSTALL)
    shown = outputs(nb)
    assert "| exectune | 24 |" in shown  # the method table, displayed as Markdown, at OVERRIDES' size
    assert (out / "sft" / "metrics.jsonl").read_text() == (clean / "sft" / "metrics.jsonl").read_text()
    assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    assert (out / "hf_guide" / "README.md").exists() and "model.safetensors" in shown
    assert "format:" in shown and "core + guide" in shown
    assert installed_from_the_checkout(shown)


def test_real_api_notebook_falls_back_to_the_simulated_endpoints_without_a_key(kernel_env,
                                                                              tmp_path):
    nb = execute("real_api.ipynb", tmp_path, kernel_env, OFFLINE_SIZES=TINY, **INSTALL)
    shown = outputs(nb)
    run_dir = tmp_path / "runs" / "real_api_offline"
    assert installed_from_the_checkout(shown)
    assert "no ANTHROPIC_API_KEY found" in shown
    estimate = shown.index("| stage | calls |")  # `exectune estimate`'s table, before stage 1
    assert "as configured $" in shown and estimate < shown.index("accepted ")
    assert steps(run_dir / "sft" / "metrics.jsonl") == [1, 2]
    assert "| exectune |" in shown and "USD" in shown
    assert (run_dir / "hf_guide" / "config.json").exists()
