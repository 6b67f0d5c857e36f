"""No import cycles among eeray's modules, counting every import: at module level and inside functions (a deferred
import still makes the two modules depend on each other; deferring only hides the circle from Python). Each
module can be read, and imported, after the ones it imports. ``from eeray.pkg import sub`` counts as an import of
``eeray.pkg.sub`` (the package's ``__init__`` re-exports names; it is not what the importing module depends
on)."""
import ast
import graphlib
from pathlib import Path

from conftest import ROOT


def module_graph(package: Path) -> dict[str, set[str]]:
    """Dotted module name -> the package's modules it imports, anywhere in it (deferred imports included)."""
    files = {".".join(p.relative_to(package.parent).with_suffix("").parts).removesuffix(".__init__"): p
             for p in package.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
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


def a_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its first module repeated at the end), or None: graphlib finds it."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        return exc.args[1]
    return None


def test_eeray_has_no_import_cycles():
    graph = module_graph(ROOT / "eeray")
    assert len(graph) > 40 and "eeray.config" in graph["eeray.study"]  # the graph was built at all
    assert a_cycle(graph) is None, a_cycle(graph)


def test_a_planted_cycle_is_found(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg.a import f\n")
    (pkg / "a.py").write_text("from pkg.sub import b\ndef f(): pass\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from ..a import f\n")  # relative: pkg.a
    (pkg / "c.py").write_text("from pkg import a\ndef g():\n    from pkg.sub import b\n")  # deferred: an edge too
    graph = module_graph(pkg)
    assert graph["pkg.c"] == {"pkg.a", "pkg.sub.b"}
    cycle = a_cycle(graph)
    assert cycle[0] == cycle[-1] and sorted(cycle[1:]) == ["pkg.a", "pkg.sub.b"], cycle
