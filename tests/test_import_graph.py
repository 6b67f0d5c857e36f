"""No import cycles among eeray's modules: the schema stays free of torch packages (config, datasets), the
declarative study free of Tune (study vs cli and raytune), and each module can be read after the ones it imports.

The graph is built from module-level imports only (an import inside a function is a deliberate deferral, e.g. the
analysis imported when a summary runs). ``from eeray.pkg import sub`` counts as an import of ``eeray.pkg.sub``
(the package's ``__init__`` re-exports names; it is not what the importing module depends on)."""
import ast
from pathlib import Path

from conftest import ROOT


def module_graph(package: Path) -> dict[str, set[str]]:
    """Dotted module name -> the package's modules it imports at module level."""
    files = {".".join(p.relative_to(package.parent).with_suffix("").parts).removesuffix(".__init__"): p
             for p in package.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                parts = here.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + [node.module or ""]).strip(".") \
                    if node.level else node.module
                subs = {f"{base}.{a.name}" for a in node.names}
                deps |= (subs & files.keys()) | ({base} if subs - files.keys() else set())
        graph[name] = (deps & files.keys()) - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while not comp or comp[-1] != v:
                comp.append(stack.pop())
                on_stack.discard(comp[-1])
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_eeray_has_no_import_cycles():
    graph = module_graph(ROOT / "eeray")
    assert len(graph) > 40 and "eeray.config" in graph["eeray.study"]  # the graph was built at all
    assert cycles(graph) == []


def test_a_planted_cycle_is_found(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg.a import f\n")
    (pkg / "a.py").write_text("from pkg.sub import b\ndef f(): pass\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from ..a import f\n")  # relative: pkg.a
    (pkg / "c.py").write_text("from pkg import a\ndef g():\n    from pkg import c\n")  # deferred: not an edge
    graph = module_graph(pkg)
    assert graph["pkg.c"] == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.sub.b"]]
