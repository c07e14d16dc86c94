"""The package layout keeps its rules: one order of the stage packages that every import follows
(function-level imports and package `__init__` side effects included), no import cycle, and a config that
validates without TensorFlow. The order is ARCHITECTURE.md's table; this file is its check."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cxrlt"
# A stage may import only the stages before it (and itself): ARCHITECTURE.md "Stages".
ORDER = ("utils", "config", "data", "model", "evaluate", "runtime", "predict", "train", "ensemble", "report", "tools")


def _modules() -> dict[str, Path]:
    """Library modules by dotted name; the entry points (commands/, __main__) stand outside the graph."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        if "commands" in rel.parts or rel.name == "__main__":
            continue
        name = ".".join(rel.parts)
        out[name.removesuffix(".__init__")] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the cxrlt modules it imports anywhere in its body (`from . import x` counts x)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:  # `from . import x`: the submodule x, else the package that defines x
                    sub = f"{target}.{alias.name}"
                    if sub in modules:
                        edges.add(sub)
                    elif target in modules:
                        edges.add(target)
            elif isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in modules}
        # Importing cxrlt.a.b runs cxrlt/a/__init__.py first: a package's own imports are the importer's too
        # (except for the importer's own packages, which Python has imported before the importer itself).
        edges |= {parent for target in edges for parent in _parents(target)
                  if parent in modules and parent not in _parents(name) + [name]}
        edges.discard(name)
        edges.discard("cxrlt")  # the package root only sets up logging and the command path
        graph[name] = edges
    return graph


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts))]


def stage(module: str) -> str:
    """cxrlt.train.kfold -> train."""
    return module.split(".")[1]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_graph_sees_function_level_imports():
    graph = import_graph()
    assert "cxrlt.data.synthetic" in graph["cxrlt.train.kfold"]  # imported inside resolve_data only
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_module_is_in_a_stage_of_the_order():
    assert {stage(m) for m in import_graph() if m != "cxrlt"} == set(ORDER)


def test_every_import_points_down_the_stage_order():
    rank = {name: i for i, name in enumerate(ORDER)}
    bad = sorted(f"{m} imports {t} ({stage(m)} may import only {', '.join(ORDER[:rank[stage(m)]]) or 'nothing'})"
                 for m, targets in import_graph().items() if m != "cxrlt"
                 for t in targets if rank[stage(t)] > rank[stage(m)])
    assert not bad, "\n".join(bad)


def test_the_graph_sees_package_init_side_effects(tmp_path):
    graph = import_graph()
    assert "cxrlt.predict" in graph["cxrlt.train.kfold"]  # kfold imports cxrlt.predict.step
    assert "cxrlt.train" not in graph["cxrlt.train.kfold"]  # its own package is imported before it
    # and a stage's __init__ stays free of its CLI module, so importing a small module stays cheap
    code = ("import sys, cxrlt.runtime.runs, cxrlt.evaluate.thresholds; "
            "print(sorted(m for m in sys.modules if m.startswith('cxrlt.') and m.endswith(('kfold', 'inference', 'ensembler', 'run_report'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent).stdout
    assert out.strip() == "[]"


def test_validating_a_config_loads_no_tensorflow():
    code = ("import sys, cxrlt.config as c; c.load(None, {'input.size': 64}); "
            "print(sorted(m for m in ('tensorflow', 'keras', 'albumentations') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent).stdout
    assert out.strip() == "[]"
