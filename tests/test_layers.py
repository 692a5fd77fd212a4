"""The package's layering, read from its source: which subpackages may import which.

Every `import` and `from ... import` is counted, also the ones inside functions (a lazy import
is still a dependency). The simulated world (`sim/`) uses the training library to build the
demo guide, so nothing the training library is made of may import the simulator.
"""

import ast
from pathlib import Path

import exectune_jax

PACKAGE = Path(exectune_jax.__file__).parent
WORLD_FREE = ("train", "models", "gcop", "data")  # subpackages that must not import sim/


def imports_of(path: Path, root: Path = PACKAGE) -> set[str]:
    """Absolute names of the exectune_jax modules `path` imports (relative imports resolved)."""
    module = ".".join(("exectune_jax", *path.relative_to(root).with_suffix("").parts))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            out.update(f"{base}.{a.name}" for a in node.names)
            out.add(base)
    return {name for name in out if name == "exectune_jax" or name.startswith("exectune_jax.")}


def sim_imports(subpackage: str, root: Path = PACKAGE) -> list[str]:
    found = []
    for path in sorted((root / subpackage).rglob("*.py")):
        for name in sorted(imports_of(path, root)):
            if name == "exectune_jax.sim" or name.startswith("exectune_jax.sim."):
                found.append(f"{path.relative_to(root)} imports {name}")
    return found


def test_the_import_walk_sees_lazy_and_relative_imports(tmp_path):
    root = tmp_path / "exectune_jax"
    pkg = root / "train"
    pkg.mkdir(parents=True)
    (pkg / "x.py").write_text("def f():\n    from exectune_jax.sim import guide\n"
                              "from ..sim.core import SimCore\n")
    assert {"exectune_jax.sim.guide", "exectune_jax.sim.core.SimCore"} <= imports_of(pkg / "x.py", root)
    assert sim_imports("train", root) == ["train/x.py imports exectune_jax.sim",
                                    "train/x.py imports exectune_jax.sim.core",
                                    "train/x.py imports exectune_jax.sim.core.SimCore",
                                    "train/x.py imports exectune_jax.sim.guide"]


def test_the_training_library_does_not_import_the_simulated_world():
    found = [line for sub in WORLD_FREE for line in sim_imports(sub)]
    assert found == [], "\n".join(found)
