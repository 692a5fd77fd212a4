"""Project imports sit at the top of a module: an import of exectune_jax inside a function needs
its reason in a `# local import:` comment on its line or in the comment right above (above a run
of imports, the comment covers the run), e.g. the CLI loading a stage's module only when that
stage runs, so `exectune --help` stays instant."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "exectune_jax"
REASON = "# local import:"


def unexplained_local_imports(path: Path) -> list[str]:
    """`path:line` of each function-local project import without a reason comment."""
    source = path.read_text()
    lines = source.splitlines()
    found = []
    tree = ast.parse(source)
    import_lines = {n for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                    for n in range(node.lineno, node.end_lineno + 1)}
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.Import):
                project = any(a.name.split(".")[0] == "exectune_jax" for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                project = node.level > 0 or (node.module or "").split(".")[0] == "exectune_jax"
            else:
                continue
            above = node.lineno - 1  # 1-based number of the line above
            while above in import_lines:
                above -= 1
            comment = []  # the comment block right above the run of imports
            while above >= 1 and lines[above - 1].strip().startswith("#"):
                comment.append(lines[above - 1].strip())
                above -= 1
            said = REASON in lines[node.lineno - 1] or any(c.startswith(REASON) for c in comment)
            if project and not said:
                found.append(f"{path}:{node.lineno}")
    return sorted(set(found), key=lambda hit: int(hit.rsplit(":", 1)[1]))


def test_every_function_local_project_import_says_why():
    found = [hit for path in sorted(PACKAGE.rglob("*.py")) for hit in unexplained_local_imports(path)]
    assert found == [], "move these imports to the top of the module, or say why they are local"


def test_an_unexplained_local_import_is_found_and_an_explained_one_is_not(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        "import json\n\n\n"
        "def plain():\n    from exectune_jax import layout\n\n\n"
        "def nested():\n    def inner():\n        import exectune_jax.io\n\n\n"
        "def explained():\n    # local import: a reason\n    # that goes on\n    from exectune_jax import cli\n    import exectune_jax.io\n\n\n"
        "def same_line():\n    from exectune_jax import io  # local import: a reason\n\n\n"
        "def not_ours():\n    import yaml\n\n\n"
        "def after_code():\n    # local import: a reason\n    from exectune_jax import cli\n    x = 1\n"
        "    from exectune_jax import layout\n")
    assert unexplained_local_imports(module) == [f"{module}:5", f"{module}:10", f"{module}:32"]
