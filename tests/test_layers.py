"""The house's layers, read from the source: each package of runner/ imports only from its own layer
or those below it, and the training engine imports neither Hydra nor the terminal."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {  # bottom to top (docs/architecture.md draws them)
    "runner": 0,  # the names every layer shares (GROUPS, run_name, flatten)
    "runner.disk": 0,
    "runner.config": 1,
    "runner.data": 2,
    "runner.engine": 3,
    "runner.analysis": 4,
    "runner.tune": 4,
    "runner.ablation": 4,
    "runner.provenance": 4,
    "runner.cli": 5,
    "runner.__main__": 6,
}
ENGINE_NEVER = ("hydra", "rich", "runner.cli")


def layer_of(module: str) -> str | None:
    """The longest entry of LAYERS that `module` lies in."""
    found = [name for name in LAYERS if module == name or module.startswith(name + ".")]
    return max(found, key=len) if found else None


def imports(path: Path) -> list[str]:
    """Every module `path` imports, at its top or inside a function (`from a import b` names a and a.b)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return names


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / "runner").rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def test_no_package_imports_from_a_layer_above_it():
    upward = []
    for module, path in modules().items():
        own = LAYERS[layer_of(module)]
        for name in imports(path):
            target = layer_of(name) if name.startswith("runner") else None
            if target is not None and LAYERS[target] > own:
                upward.append(f"{module} imports {name}")
    assert upward == []


def test_the_engine_imports_neither_hydra_nor_the_terminal():
    found = [
        f"{module} imports {name}"
        for module, path in modules().items()
        if module.startswith("runner.engine")
        for name in imports(path)
        if name.startswith(ENGINE_NEVER)
    ]
    assert found == []


def test_every_package_of_runner_has_a_layer():
    assert [m for m in modules() if layer_of(m) is None] == []
