"""No import cycle among kpconv's modules: the import graph read from the source with ``ast`` (imports
at module level and inside functions alike; nothing is imported), its strongly connected components
found by a depth-first search. A package importing its own submodules does not count."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "kpconv"


def _modules():
    mods = {}
    for p in PACKAGE.rglob("*.py"):
        parts = ("kpconv",) + p.relative_to(PACKAGE).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return mods


def _imports(name, path, mods):
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for a in node.names:   # "from . import x" names a module; "from .x import y" its module
                target = f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                if target in mods:
                    out.add(target)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in mods)
    out.discard(name)
    return out


def _cycles(graph):
    """Tarjan's strongly connected components with more than one module (a package and its own
    submodules only: not a cycle)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
            top = min(comp, key=len)
            if len(comp) > 1 and not all(c == top or c.startswith(top + ".") for c in comp):
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_walk_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"p": {"p.x"}, "p.x": {"p"}}) == []   # a package and its submodule


def test_no_import_cycle_in_kpconv():
    mods = _modules()
    assert "kpconv.model.train" in mods and "kpconv.data.formats.coco" in mods
    graph = {m: _imports(m, p, mods) for m, p in mods.items()}
    assert "kpconv.model.run" in graph["kpconv.model.train"]    # function-level imports count too
    assert _cycles(graph) == []
