"""The package's layout holds: every import goes to the same pipeline stage or one below it, and no
modules import each other in a circle (function-level imports included, and the imports made from
strings: a registry's "module:Class" entries and the package's lazy `_EXPORTS`)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import fastmask_cli

PACKAGE = Path(fastmask_cli.__file__).resolve().parent
# Lowest first; a module may import its own stage and those before it (docs/paper.md, "How the paper maps onto the code").
STAGES = [("errors", "device"), ("io",), ("coco",), ("modeling",), ("inference",), ("training",), ("export",), ("runs",), ("bench",), ("cli",)]
RANK = {name: rank for rank, names in enumerate(STAGES) for name in names}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Modules of the package that `path` imports, as dotted names relative to the package."""
    here = module_name(path).split(".") if module_name(path) else []
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            target = base + (node.module.split(".") if node.module else [])
            if node.module is None:  # `from . import x`: x are modules of that package
                found |= {".".join(target + [alias.name]) for alias in node.names}
            else:
                found.add(".".join(target))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fastmask_cli."):
            found.add(node.module.removeprefix("fastmask_cli."))
        elif isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_EXPORTS" for t in node.targets):
            found |= {".".join(package + [value.value]) for value in node.value.values}  # loaded by __getattr__
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and REGISTRY_ENTRY.match(node.value):
            target = ".".join(package + [node.value.partition(":")[0]])  # registry.Registry imports it when asked
            if _exists(target):
                found.add(target)
    return {name for name in found if name}


REGISTRY_ENTRY = re.compile(r"^[a-z_][a-z0-9_.]*:[A-Za-z_]\w*$")


def _exists(module: str) -> bool:
    path = PACKAGE.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def graph() -> dict[str, set[str]]:
    return {module_name(path): imports(path) for path in PACKAGE.rglob("*.py")}


def stage(module: str) -> int | None:
    return RANK.get(module.split(".")[0])


def test_every_import_goes_to_its_own_stage_or_a_lower_one() -> None:
    wrong = [f"{a} imports {b}" for a, targets in graph().items() for b in targets
             if stage(a) is not None and stage(b) is not None and stage(b) > stage(a)]
    assert not wrong, wrong


def test_no_module_is_unplaced() -> None:
    unplaced = sorted(m for m in graph() if m and stage(m) is None and m != "__main__")
    assert not unplaced, f"modules outside every stage: {unplaced}"


def test_no_import_circles() -> None:
    modules = graph()
    edges = {a: {b for b in targets if b in modules} for a, targets in modules.items()}
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in edges.get(node, ()):
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join(trail[trail.index(nxt):] + [node, nxt]) if nxt in trail
                                     else f"import circle through {node} -> {nxt}")
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for node in edges:
        if node not in state:
            visit(node, [])


def test_string_imports_are_followed() -> None:
    """The registry's entries and the lazy exports are edges of the graph the tests above check."""
    modules = graph()
    assert "modeling.bodies.mobilenet_v2" in modules["modeling.registry"] and "modeling.head" in modules["modeling.registry"]
    assert {"coco.evaluate", "runs.jobs", "training.engine"} <= modules[""]
