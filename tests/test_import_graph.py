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


def test_importing_any_eeray_module_changes_no_environment_variable():
    """Options travel as arguments and settings are made by the run that needs them: importing every module of
    eeray (in a fresh interpreter, with nothing of eeray's set) leaves os.environ as it was. The libraries are
    imported before the snapshot: importing Ray sets two variables of its own."""
    import json
    import os
    import subprocess
    import sys

    modules = sorted(m for m in module_graph(ROOT / "eeray") if not m.endswith("__main__"))
    code = ("import importlib, json, os, sys\n"
            "import mlflow, optuna, pandas, pyarrow, ray, ray.tune, torch\n"
            "before = dict(os.environ)\n"
            "for m in json.loads(sys.argv[1]):\n"
            "    importlib.import_module(m)\n"
            "after = dict(os.environ)\n"
            "print(json.dumps({k: [before.get(k), after.get(k)] for k in set(before) | set(after)"
            " if before.get(k) != after.get(k)}))")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "TUNE_", "MLFLOW_", "EERAY_"))
           and k not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")}
    out = subprocess.run([sys.executable, "-c", code, json.dumps(modules)], capture_output=True, text=True,
                         env={**env, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(modules) > 60
    assert json.loads(out.stdout.splitlines()[-1]) == {}
