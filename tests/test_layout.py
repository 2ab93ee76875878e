"""The layout holds: no import cycles in daemon/, no module over 400 lines, no function over 60.

Every `import daemon.x` and `from daemon.x import y` counts, lazy ones inside functions too: a
cycle hidden by a lazy import is still a cycle for a reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

DAEMON = Path(__file__).resolve().parent.parent / "daemon"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _module_name(path: Path) -> str:
    parts = path.relative_to(DAEMON.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(DAEMON.rglob("*.py"))}


def _imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The daemon modules path imports; `from package import module` names the module."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "daemon"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "daemon":
                continue
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return found


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imports(path, known) for name, path in known.items()}


def test_every_daemon_import_names_a_module_that_exists():
    known = _modules()
    missing = {
        f"{name} imports {target}"
        for name, targets in _graph().items()
        for target in targets
        if target not in known
    }
    assert not missing, sorted(missing)


def _cycle_from(start: str, graph: dict[str, set[str]]) -> list[str] | None:
    """A path start -> ... -> start through the graph, or None."""
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                return [*path, nxt]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def test_no_import_cycles():
    graph = _graph()
    cycles = [c for name in graph if (c := _cycle_from(name, graph)) is not None]
    assert not cycles, " ; ".join(" -> ".join(c) for c in cycles)


def test_no_module_is_over_the_limit():
    long = {
        str(p.relative_to(DAEMON.parent)): n
        for p in DAEMON.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not long, long


def test_no_function_is_over_the_limit():
    long = {}
    for path in DAEMON.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(DAEMON.parent)}:{node.lineno} {node.name}"] = length
    assert not long, long


# Each protocol library stays in its front door (docs/ARCHITECTURE.md): an upgrade touches one room.
CONFINED = {
    "paho": {"daemon.frontends.mqtt", "daemon.frontends.client"},
    "wyoming": {"daemon.frontends.wyoming_handle", "daemon.frontends.wyoming_events"},
}


def _third_party(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_protocol_libraries_stay_in_their_front_doors():
    users: dict[str, set[str]] = {lib: set() for lib in CONFINED}
    for name, path in _modules().items():
        for lib in _third_party(path) & set(CONFINED):
            users[lib].add(name)
    assert users == CONFINED
