"""The library's layering: ``mrkd_core`` imports neither Prefect nor Ray (docs/architecture, docs/interfaces.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Imports every module of mrkd_core in one fresh interpreter, then lists what got loaded.
_PROBE = """
import importlib, json, pkgutil, sys
import mrkd_core
names = sorted(m.name for m in pkgutil.walk_packages(mrkd_core.__path__, "mrkd_core."))
for name in names:
    importlib.import_module(name)
loaded = sorted({m.split(".")[0] for m in sys.modules})
print(json.dumps({"modules": names, "loaded": loaded}))
"""

ORCHESTRATORS = {"prefect", "prefect_ray", "ray"}


def test_no_mrkd_core_module_imports_prefect_or_ray():
    proc = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"mrkd_core.engine", "mrkd_core.train", "mrkd_core.cli", "mrkd_core.checkpoint"} <= set(out["modules"])
    assert len(out["modules"]) >= 40  # every module, not a few
    leaked = ORCHESTRATORS & set(out["loaded"])
    assert not leaked, f"importing mrkd_core loads {sorted(leaked)}: the library must not depend on the orchestrator"


# --------------------------------------------------------------------------- the import graph
# The layers of docs/architecture.md, lowest first. A module may import its own layer or a
# lower one, never a higher one; no import circle at all, whatever the layer. Every import
# counts: at the top of a file, inside a function, under TYPE_CHECKING.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ground", ("mrkd_core.errors", "mrkd_core.revision", "mrkd_core.console", "mrkd_core.metrics",
                "mrkd_core.score", "mrkd_core.published", "mrkd_core.figures", "mrkd_core.progress",
                "mrkd_core.ilm", "mrkd_core.backbones")),
    ("config and store", ("mrkd_core.config", "mrkd_core.storage", "mrkd_core.lineage", "mrkd_core.claims")),
    ("model, data, specs", ("mrkd_core.model", "mrkd_core.data", "mrkd_core.device", "mrkd_core.specs",
                            "mrkd_core.tiling")),
    ("training and test stage", ("mrkd_core.train", "mrkd_core.evaluate", "mrkd_core.checkpoint")),
    ("stored results", ("mrkd_core.results", "mrkd_core.partitioned", "mrkd_core.model_io", "mrkd_core.layout",
                        "mrkd_core.inspections")),
    ("reports, registry, inference", ("mrkd_core.paper_tables", "mrkd_core.benchmark_tables",
                                      "mrkd_core.history_report", "mrkd_core.report",
                                      "mrkd_core.registry", "mrkd_core.inference")),
    ("engine", ("mrkd_core.engine",)),
    ("entry points", ("mrkd_core.cli",)),
    ("orchestration", ("flows",)),
)
PACKAGES = ("mrkd_core", "flows")
# Package faces (``__init__.py``) by their exact name: ``mrkd_core`` hands on the config.
FACES = {"mrkd_core": "config and store", "flows": "orchestration"}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imported(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of ``known`` that ``module`` imports anywhere in its file."""
    import ast

    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            # A package's own submodules importing it (for a sibling) are not an edge of the picture.
            if name and name != module and not module.startswith(name + "."):
                targets.add(name)
    return targets


def _layer(module: str) -> int:
    if module in FACES:
        return [name for name, _ in LAYERS].index(FACES[module])
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module} has no layer: add it to LAYERS here and to docs/architecture.md")


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {m: _imported(m, p, known) for m, p in known.items()}


def test_every_module_has_a_layer_and_imports_only_its_own_or_lower_layers():
    graph = _graph()
    assert "mrkd_core.engine" in graph and "flows.benchmark" in graph and len(graph) >= 60
    upward = sorted(f"{m} ({LAYERS[_layer(m)][0]}) imports {t} ({LAYERS[_layer(t)][0]})"
                    for m, targets in graph.items() for t in targets if _layer(t) > _layer(m))
    assert not upward, "imports from a lower layer into a higher one:\n" + "\n".join(upward)


def test_the_library_never_imports_a_module_that_orchestrates():
    leaks = sorted(f"{m} imports {t}" for m, targets in _graph().items() if m.startswith("mrkd_core")
                   for t in targets if t.startswith("flows"))
    assert not leaks, leaks


def test_no_import_circle_in_mrkd_core_or_flows():
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    assert not circles, f"import circles: {circles}"


def test_the_graph_sees_function_local_imports(tmp_path):
    """The checks above read imports inside functions too (where circles used to hide)."""
    known = {"pkg.a": tmp_path / "a.py", "pkg.b": tmp_path / "b.py"}
    known["pkg.a"].write_text("def f():\n    from pkg.b import g\n    return g\n")
    known["pkg.b"].write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n")
    assert _imported("pkg.a", known["pkg.a"], known) == {"pkg.b"}
    assert _imported("pkg.b", known["pkg.b"], known) == {"pkg.a"}
