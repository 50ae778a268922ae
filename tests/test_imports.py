"""The package's import graph has no circle: a module never imports, directly or through others, one that imports
it (function-level imports count too)."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"


def import_graph() -> dict[str, set[str]]:
    modules = {}
    for path in SRC.rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                parts = package.split(".")
                target = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
                found |= {m for m in [target] + [f"{target}.{a.name}" for a in node.names] if m in modules}
        graph[name] = found - {name}
    return graph


def test_no_import_circle():
    graph = import_graph()

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt == goal:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return False

    circles = sorted(f"{a} -> {b}" for a in graph for b in graph[a] if reaches(b, a))
    assert not circles


# No upward import: a module of the left never imports (directly) one of the right. Lower layers are leaves the
# upper ones build on: the ledger knows no method and no runner, methods know no request kind and no runner, the
# request kinds know no method, and models, data and CLIP know none of them.
FORBIDDEN = {
    "forgetkit.ledger": ("forgetkit.engine", "forgetkit.methods", "forgetkit.requests"),
    "forgetkit.methods": ("forgetkit.engine", "forgetkit.requests.forget", "forgetkit.requests.restore",
                          "forgetkit.requests.learn", "forgetkit.bench", "forgetkit.cli", "forgetkit.api",
                          "forgetkit.report"),
    "forgetkit.requests": ("forgetkit.methods", "forgetkit.engine.editor", "forgetkit.engine.run", "forgetkit.bench"),
    "forgetkit.models": ("forgetkit.methods", "forgetkit.engine", "forgetkit.requests", "forgetkit.ledger"),
    "forgetkit.data": ("forgetkit.methods", "forgetkit.engine", "forgetkit.requests", "forgetkit.models"),
    "forgetkit.engine": ("forgetkit.bench", "forgetkit.cli", "forgetkit.api"),
}


def upward_edges(graph: dict[str, set[str]]) -> list[str]:
    def within(module: str, package: str) -> bool:
        return module == package or module.startswith(package + ".")

    return sorted(f"{module} -> {target}" for module, targets in graph.items() for target in targets
                  for low, high in FORBIDDEN.items() if within(module, low) and any(within(target, h) for h in high))


def test_no_upward_import():
    assert not upward_edges(import_graph())


def test_upward_edge_is_found():
    """The rule flags an edge it forbids (and only that one) in a made-up graph."""
    graph = {"forgetkit.ledger": {"forgetkit.methods.base", "forgetkit.io"}, "forgetkit.methods.gs_lora":
             {"forgetkit.requests.forget", "forgetkit.ledger"}, "forgetkit.engine.run": {"forgetkit.methods.base"}}
    assert upward_edges(graph) == ["forgetkit.ledger -> forgetkit.methods.base",
                                   "forgetkit.methods.gs_lora -> forgetkit.requests.forget"]
