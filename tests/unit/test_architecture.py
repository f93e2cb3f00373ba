"""The layout is the architecture: packages are layers, imports point down, no circle.

Every ``import`` in worker/ is read with ``ast`` (those inside functions and under
``TYPE_CHECKING`` too: a circle a type checker needs is still a circle for a reader).
``make lint`` runs this file.
"""

from __future__ import annotations

import ast
from pathlib import Path

WORKER = Path(__file__).resolve().parents[2] / "worker"

# Lowest first. A module may import from its own layer or any layer below, never above.
LAYERS: list[tuple[str, ...]] = [
    ("core",),
    ("infra",),
    ("connectors",),
    ("records",),
    ("delivery",),
    ("queue",),
    ("producer",),
    ("backfill",),  # enqueues through the producer
    ("ingress",),
    ("cli",),  # the command runs everything, the ingress server included
    ("",),  # worker/__init__.py: the Celery app for `celery -A worker`
]


def module_name(path: Path) -> str:
    parts = path.relative_to(WORKER.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(WORKER.rglob("*.py"))}


def imports(path: Path, known: dict[str, Path], name: str | None = None) -> set[str]:
    """The worker modules ``path`` (module ``name``) imports; a name imported from a
    package counts as that module when it is one."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in known:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in known else node.module)
    found.discard(name or module_name(path))
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, known) for name, path in known.items()}


def layer_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    for rank, row in enumerate(LAYERS):
        if top in row:
            return rank
    raise AssertionError(f"{module}: in no layer; add its package to LAYERS")


def row_of(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def test_every_module_is_in_a_layer() -> None:
    for module in modules():
        layer_of(module)


def test_imports_point_down() -> None:
    upward = [
        f"{module} imports {target}"
        for module, targets in graph().items()
        for target in sorted(targets)
        if layer_of(target) > layer_of(module)
        or (layer_of(target) == layer_of(module) and row_of(target) != row_of(module))
    ]
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_no_import_circle() -> None:
    edges = graph()
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges[module]):
            if state.get(target) == 1:
                circles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    assert layer_of("worker.queue.tasks") > layer_of("worker.core.events")
    source = tmp_path / "x.py"
    source.write_text("from worker.queue import tasks\nimport worker.core.events\n")
    known = modules()
    assert imports(source, known, "x") == {"worker.queue.tasks", "worker.core.events"}
