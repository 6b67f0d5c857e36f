"""The commands eeray prints for the user to type (the MLflow UI, the report, a resume, the MLflow sync).

Each one works pasted into a fresh shell, from any directory, whether or not a virtual environment is activated:
it names the interpreter that ran the study by its absolute path (``.venv/bin/python``, never a bare ``python`` or
``mlflow`` that only an activated environment puts on PATH), and a command that imports eeray sets PYTHONPATH to
the folder holding the eeray that ran, so it imports that same code even where eeray is not installed, or where
the working directory holds a folder named ``eeray`` (a clone) that Python would otherwise import as a namespace
package. Every word is quoted for the shell (``shlex``): paths with spaces paste as they are.
"""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Sequence


def eeray_root() -> Path:
    """The folder that holds the ``eeray`` package this process imported (a clone's root, or site-packages)."""
    return Path(__file__).resolve().parents[1]


def python() -> str:
    """The interpreter running now, by absolute path; a venv's ``bin/python`` stays as it is (resolving its
    symlink would leave the venv and its packages)."""
    return os.path.abspath(sys.executable) if sys.executable else "python3"


def _join(words: Sequence[str]) -> str:
    return " ".join(shlex.quote(str(w)) for w in words)


def eeray_module(module: str, *args: str | os.PathLike) -> str:
    """``PYTHONPATH=<root> <python> -m <module> args``: runs this eeray's ``module``. The assignment is written
    unquoted up to the ``=`` (a quoted ``'PYTHONPATH=...'`` would be taken by the shell as a command name)."""
    return f"PYTHONPATH={shlex.quote(str(eeray_root()))} {_join([python(), '-m', module, *map(str, args)])}"


def python_module(module: str, *args: str | os.PathLike) -> str:
    """``<python> -m <module> args`` for a module of a dependency (mlflow): installed beside eeray."""
    return _join([python(), "-m", module, *map(str, args)])


def mlflow_ui(tracking_uri: str, port: int = 5000) -> str:
    return python_module("mlflow", "ui", "--backend-store-uri", tracking_uri, "--host", "127.0.0.1", "--port",
                         str(port))


def report(results_dir: str | os.PathLike, study: str) -> str:
    return eeray_module("eeray.analysis", "report", os.path.abspath(results_dir), "--study", study)


def mlflow_sync(results_dir: str | os.PathLike, study: str) -> str:
    return eeray_module("eeray.mlflow_sync", os.path.abspath(results_dir), "--study", study)


# flags whose default comes from the environment: a fresh shell lacks that environment, so a resume names them
ENV_DEFAULTED = {"--results-dir": "EERAY_RESULTS_DIR", "--data-root": "EERAY_DATA_ROOT"}


def resume(argv: Sequence[str] | None = None, cwd: str | None = None, environ=os.environ) -> str:
    """The command that continues this study: ``cd <where it ran> && <python> <study file> <its flags> --resume``.
    The ``cd`` keeps every relative path among its flags (``--results-dir results``) meaning what it meant; the
    study file is named by absolute path and finds its own eeray (studies/*.py); a flag whose default came from
    the environment (EERAY_RESULTS_DIR, EERAY_DATA_ROOT) is written out. ``--fresh`` would delete what is to be
    continued and ``--extend`` is a different request: both are dropped."""
    argv = list(sys.argv if argv is None else argv)
    cwd = cwd or os.getcwd()
    script = os.path.join(cwd, argv[0])
    flags = [a for a in argv[1:] if a not in ("--fresh", "--resume", "--extend")]
    given = {a.split("=", 1)[0] for a in flags}
    for flag, var in ENV_DEFAULTED.items():
        if flag not in given and environ.get(var):
            flags = [flag, os.path.abspath(os.path.expanduser(environ[var])), *flags]
    return f"cd {shlex.quote(cwd)} && {_join([python(), os.path.normpath(script), *flags, '--resume'])}"
