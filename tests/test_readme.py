"""The README's two set-up commands are the ones CI and users run."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEST_COMMAND = "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/pytest"
DEMO_COMMAND = "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/exectune demo"


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert TEST_COMMAND in readme
    assert TEST_COMMAND in ci.splitlines()


def test_readme_names_the_demo_command_near_the_top():
    head = (REPO / "README.md").read_text().splitlines()[:40]
    assert any(DEMO_COMMAND in line for line in head)
