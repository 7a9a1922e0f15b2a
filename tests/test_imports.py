"""The import rules of docs/modules.md, checked by walking every module's imports (ast): no cycle,
no forbidden edge between the package's parts, mpi4py only in pintopt/comm/mpi.py, and kernels
that import nothing but numba, NumPy and the standard library."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: (part, part) edges docs/modules.md forbids.
FORBIDDEN = (
    {("kernels", p) for p in ("methods", "comm", "cli", "config", "checkpoint", "model", "data",
                              "api", "loop", "layout", "options", "guards")}
    | {("methods", p) for p in ("cli", "config", "checkpoint", "api")}
    | {("comm", "methods"), ("model", "comm"), ("data", "comm"), ("options", "config")}
)


def module_files() -> dict[str, Path]:
    mods = {}
    for p in sorted(REPO.glob("pintopt/**/*.py")) + sorted(REPO.glob("kernels/**/*.py")):
        parts = list(p.relative_to(REPO).with_suffix("").parts)
        if parts[0] == "kernels":
            parts = ["pintopt"] + parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


def imported_names(name: str, path: Path) -> set[str]:
    """Every module name an import statement of the file names (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def part(module: str) -> str:
    if module.startswith("pintopt.kernels"):
        return "kernels"
    if module.startswith("pintopt.methods"):
        return "methods"
    if module.startswith("pintopt.comm"):
        return "comm"
    return module.split(".")[1] if "." in module else "init"


def graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(edges between pintopt modules, every imported name) by module."""
    mods = module_files()
    edges, raw = {}, {}
    for name, path in mods.items():
        names = imported_names(name, path)
        raw[name] = names
        targets = set()
        for t in names:
            while t and t not in mods:
                t = t.rsplit(".", 1)[0] if "." in t else ""
            if t and t != name:
                targets.add(t)
        edges[name] = targets
    return edges, raw


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    edges, _ = graph()
    assert cycles(edges) == []


def test_no_forbidden_edge():
    edges, _ = graph()
    bad = [f"{m} -> {t}" for m, ts in edges.items() for t in ts if (part(m), part(t)) in FORBIDDEN]
    assert bad == []


def test_only_the_mpi_communicator_imports_mpi4py():
    _, raw = graph()
    users = sorted(m for m, names in raw.items() if any(n.split(".")[0] == "mpi4py" for n in names))
    assert users == ["pintopt.comm.mpi"]


def test_kernels_import_only_numba_numpy_and_the_standard_library():
    _, raw = graph()
    allowed = {"numba", "numpy", "llvmlite", "pintopt"} | set(sys.stdlib_module_names)
    for m, names in raw.items():
        if part(m) != "kernels":
            continue
        outside = sorted(n for n in names if n.split(".")[0] not in allowed)
        assert outside == [], m
        inside = sorted(n for n in names if n.startswith("pintopt.") and
                        not n.startswith("pintopt.kernels"))
        assert inside == [], m


@pytest.mark.parametrize(
    "edges,expected",
    [({"a": {"b"}, "b": {"a"}}, [["a", "b"]]), ({"a": {"b"}, "b": set()}, [])],
)
def test_the_cycle_finder_finds_cycles(edges, expected):
    """The check itself can fail."""
    assert cycles(edges) == expected
