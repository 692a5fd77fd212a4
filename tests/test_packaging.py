"""Every third-party module the package imports is a declared runtime dependency, at a range
whose lower bound is the tested version in constraints.txt."""

import ast
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OPTIONAL = {"datasets"}  # hub loading only, imported lazily with a one-line error naming the install
EXTRAS = {"wandb": "wandb"}  # imported lazily; a missing one is a one-line error naming the extra
NEEDED_BY_DEPENDENCIES = {"jinja2"}  # transformers' apply_chat_template imports it without declaring it


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def declared_names(requirements: list[str]) -> dict[str, str]:
    found = {}
    for req in requirements:
        match = re.match(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?(.*)", req)
        found[match.group(1).lower().replace("_", "-")] = match.group(3)
    return found


def imported_modules() -> set[str]:
    names = set()
    for path in (REPO / "exectune_jax").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "exectune_jax"}


def test_every_imported_third_party_module_is_a_declared_dependency():
    declared = declared_names(project()["dependencies"])
    providers = metadata.packages_distributions()
    for module in sorted(imported_modules() - OPTIONAL):
        dists = {d.lower().replace("_", "-") for d in providers.get(module, [])}
        if module in EXTRAS:
            extra = declared_names(project()["optional-dependencies"][EXTRAS[module]])
            assert dists & extra.keys(), f"{module}: not in the [{EXTRAS[module]}] extra"
            continue
        assert dists & declared.keys(), f"exectune_jax imports {module} (from {dists}) but does not declare it"
    assert NEEDED_BY_DEPENDENCIES <= declared.keys()


def test_ranges_start_at_the_tested_versions_and_extras_name_jax_accelerator_builds():
    pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    for name, spec in declared_names(project()["dependencies"]).items():
        lower = re.search(r">=([^,]+)", spec)
        assert lower and "<" in spec, f"{name}{spec}: needs a compatible range >=TESTED,<NEXT"
        assert pins[name] == lower.group(1), f"{name}: range starts at {lower.group(1)}, tested {pins[name]}"
    extras = project()["optional-dependencies"]
    assert extras["tpu"] == [f"jax[tpu]>={pins['jax']},<0.11"]
    assert extras["cuda"] == [f"jax[cuda12]>={pins['jax']},<0.11"]
    assert any(r.startswith("wandb") for r in extras["wandb"]) and any(r.startswith("peft") for r in extras["test"])
