"""The package's layering, as the code states it: imports go one way, the model stands alone, training does not
depend on the analyses, and every file the product cites exists in the repository.

    python tests/test_structure.py      # prints which package imports which
"""

import ast
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, Set

PACKAGE = Path(__file__).resolve().parent.parent / "mixln_dist"
REPO = PACKAGE.parent


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> Dict[str, Set[str]]:
    """Module -> the package modules it imports, at module level or inside functions (a lazy import is still a
    dependency)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: Dict[str, Set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                    base = ".".join(base + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                # `from x import y` names the submodule x.y when there is one, else something inside x.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def reachable(graph: Dict[str, Set[str]], start: str) -> Set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_no_import_cycles():
    graph = import_graph()
    cycles = sorted(m for m in graph if m in reachable(graph, m))
    assert not cycles, f"modules on an import cycle: {cycles}"


def test_the_model_package_imports_nothing_of_the_rest():
    graph = import_graph()
    for module, edges in graph.items():
        if module.startswith("mixln_dist.model"):
            outside = {e for e in edges if not e.startswith("mixln_dist.model")}
            assert not outside, f"{module} imports {outside}: the model must be buildable from the model package alone"


def test_training_does_not_depend_on_the_analyses_or_the_entry_points():
    graph = import_graph()
    for module in graph:
        if module.startswith("mixln_dist.train"):
            bad = {m for m in reachable(graph, module) if m.startswith(("mixln_dist.diagnostics", "mixln_dist.cli"))}
            assert not bad, f"{module} depends on {bad}"


def test_only_entry_points_import_the_entry_points():
    graph = import_graph()
    for module, edges in graph.items():
        if not module.startswith("mixln_dist.cli"):
            assert not {e for e in edges if e.startswith("mixln_dist.cli")}, module


CITED = re.compile(r"(?<![\w/.])((?:docs|tests|bench|launch|docker|configs)/[\w./-]+\.(?:md|py|sh|yaml|png))")


def test_every_file_the_product_cites_exists_and_nothing_points_outside_the_repository():
    texts = [*PACKAGE.rglob("*.py"), *PACKAGE.rglob("*.yaml"), *PACKAGE.rglob("*.md"), *(REPO / "docs").rglob("*.md"),
             REPO / "README.md", *(REPO / "launch").rglob("*.py")]
    missing, outside = [], []
    for path in texts:
        text = path.read_text()
        if "../shared" in text:
            outside.append(str(path.relative_to(REPO)))
        for cited in CITED.findall(text):
            if not (REPO / cited).exists():
                missing.append(f"{path.relative_to(REPO)} cites {cited}")
    assert not outside, f"files that point outside the repository: {outside}"
    assert not missing, missing


def package_layers() -> Dict[str, Set[str]]:
    """Which top-level part of the package imports which (for people: `python tests/test_structure.py`)."""
    def part(module: str) -> str:
        return ".".join(module.split(".")[:2])

    layers = defaultdict(set)
    for module, edges in import_graph().items():
        layers[part(module)] |= {part(e) for e in edges if part(e) != part(module)}
    return layers


if __name__ == "__main__":
    for name, deps in sorted(package_layers().items(), key=lambda kv: (len(kv[1]), kv[0])):
        short = lambda m: m.replace("mixln_dist.", "")  # noqa: E731
        print(f"{short(name):<14} -> {', '.join(sorted(map(short, deps))) or '(nothing)'}")
    sys.exit(0)
