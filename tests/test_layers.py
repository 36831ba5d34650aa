"""Layering, read from the imports (module level and inside functions alike):

library (streamtune/ but streamtune/stages/) <- stages (streamtune/stages/: data_prep, train, evaluate, export; and
the thin wrappers data_prep/, export/, train.py, evaluate.py at the top) <- bench/ ; tests import anything.
The library imports no stage; no stage imports bench; no two modules import each other, directly or round a loop.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import REPO

STAGES = ("streamtune.stages", "data_prep", "export", "train", "evaluate")
BENCH = "bench"


def layer(module: str) -> str:
    if module == "streamtune.stages" or module.startswith("streamtune.stages."):
        return "stage"
    top = module.split(".")[0]
    return {"streamtune": "library", "bench": "bench"}.get(top, "stage" if top in STAGES else "other")
SKIP = {"tests", ".venv", "outputs", "dist", "docs", "runs", "wandb"}


def project_modules(root: Path) -> dict[str, Path]:
    mods = {}
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if rel.parts[0] in SKIP or any(p.startswith(".") for p in rel.parts):
            continue
        name = ".".join(rel.with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = path
    return mods


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> project modules it imports (every import statement, wherever it is in the file)."""
    mods = project_modules(root)
    tops = {m.split(".")[0] for m in mods}
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parent, base] if base else parent)
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target.split(".")[0] in tops and target != name:
                    graph[name].add(target)
    return graph


def layer_breaks(graph: dict[str, set[str]]) -> list[str]:
    breaks = []
    for mod, targets in graph.items():
        for target in sorted(targets):
            if layer(mod) == "library" and layer(target) != "library":
                breaks.append(f"the library imports a stage or bench: {mod} -> {target}")
            if layer(mod) == "stage" and layer(target) == "bench":
                breaks.append(f"a stage imports bench: {mod} -> {target}")
    return breaks


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (a package __init__ re-exporting its own
    submodules excepted)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
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
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def test_library_imports_no_stage_and_nothing_imports_in_a_loop():
    graph = import_graph(REPO)
    assert {"streamtune.ops.rnnt_loss", "streamtune.stages.train", "streamtune.data.validate", "train",
            "bench.streaming"} <= set(graph), "the scan sees the tree"
    assert not layer_breaks(graph), "\n".join(layer_breaks(graph))
    assert not cycles(graph), f"import cycles: {cycles(graph)}"


def test_the_check_catches_a_cycle_and_a_layer_break(tmp_path):
    (tmp_path / "streamtune" / "stages").mkdir(parents=True)
    (tmp_path / "streamtune" / "__init__.py").write_text("")
    (tmp_path / "streamtune" / "stages" / "__init__.py").write_text("")
    (tmp_path / "streamtune" / "a.py").write_text("def f():\n    from streamtune.b import g\n")
    (tmp_path / "streamtune" / "b.py").write_text("from streamtune import a\n\n"
                                                  "def g():\n    import streamtune.stages.x\n")
    (tmp_path / "streamtune" / "stages" / "x.py").write_text("import bench.y\n")
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "y.py").write_text("")
    graph = import_graph(tmp_path)
    assert cycles(graph) == [["streamtune.a", "streamtune.b"]]
    assert layer_breaks(graph) == ["the library imports a stage or bench: streamtune.b -> streamtune.stages.x",
                                   "a stage imports bench: streamtune.stages.x -> bench.y"]
