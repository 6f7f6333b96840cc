"""The layering the code relies on: model, quant, kernels and weights import each other without a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import qwen3lab

ROOT = Path(qwen3lab.__file__).parent
PACKAGES = ("model", "quant", "kernels", "weights")


def _unit(module: str) -> str:
    """qwen3lab.<package>.x -> <package>; top-level modules stand for themselves."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def import_graph() -> dict[str, set[str]]:
    """Package -> the qwen3lab packages its files import (at module level or inside functions)."""
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        module = ".".join(rel.parts)
        package = module if path.name != "__init__.py" else module.removesuffix(".__init__")
        src = _unit(module)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + (path.name == "__init__.py")]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                names = [f"{target}.{a.name}" for a in node.names] if not node.module else [target]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.startswith("qwen3lab."):
                    dst = _unit(name)
                    if dst != src:
                        graph.setdefault(src, set()).add(dst)
    return graph


def _cycle(graph: dict[str, set[str]], among: tuple[str, ...]) -> list[str] | None:
    def visit(node, path):
        for nxt in sorted(graph.get(node, ())):
            if nxt == path[0]:
                return path + [nxt]
            if nxt in among and nxt not in path:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        return None

    for start in among:
        found = visit(start, [start])
        if found:
            return found
    return None


def test_no_import_cycle_among_model_quant_kernels_weights():
    graph = import_graph()
    assert "kernels" in graph.get("model", set()) and "model" in graph.get("quant", set())  # the graph is read
    assert _cycle(graph, PACKAGES) is None, f"import cycle: {' -> '.join(_cycle(graph, PACKAGES))}"


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"model": {"quant"}, "quant": {"kernels"}, "kernels": {"model"}}, PACKAGES) == [
        "model", "quant", "kernels", "model"]
