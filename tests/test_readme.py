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


def python_block(heading: str) -> str:
    section = (REPO / "README.md").read_text().split(f"\n## {heading}\n")[1].split("\n## ")[0]
    return section.split("```python\n")[1].split("```")[0]


def test_readme_python_section_calls_each_stage_as_the_api_defines_it():
    """Its imports resolve, its config loads, and every call binds to the real signature."""
    import ast
    import inspect

    tree = ast.parse(python_block("From Python"))
    namespace: dict = {}
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.Assign)):
            exec(compile(ast.Module([node], []), "README.md", "exec"), namespace)
    calls = [n.value for n in tree.body if isinstance(n, ast.Expr) and isinstance(n.value, ast.Call)]
    for call in calls:
        func = eval(ast.unparse(call.func), namespace)
        args = [eval(ast.unparse(a), namespace) for a in call.args]
        inspect.signature(func).bind(*args, **{k.arg: None for k in call.keywords})
    called = [ast.unparse(c.func) for c in calls]
    assert called == ["prepare_runtime", "acceptance.run", "sft.run", "grpo.run", "evaluate.run",
                      "export.run"]
    assert namespace["cfg"].run_dir == "runs/py" and namespace["cfg"].sft.steps == 100
