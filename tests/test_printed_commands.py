"""What eeray prints for the user to type works when pasted into a fresh shell, and a study file runs from any
working directory.

"Fresh shell" here is ``bash -c <the printed line>`` with a clean environment: no activated virtual environment
(PATH is /usr/bin:/bin, no VIRTUAL_ENV, no PYTHONPATH), run from another directory, one that holds a folder named
``eeray`` as a user's home holds a clone of that name (Python would import that folder as a namespace package if
the current directory came first on sys.path). The only variables set are the suite's offline settings (Ray's usage
stats off, local Ray without token authentication, MLflow's telemetry off), which no printed command relies on.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, free_port, wait_for

from eeray import commands
from eeray.mlflow_mirror import VIEW_TAG_PREFIX, classic_view_url, view_key

STUDY = ROOT / "tests" / "studies" / "integrity_study.py"


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8", "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "disabled", "MLFLOW_ENABLE_TELEMETRY": "false", **extra}


def user_home(tmp_path: Path) -> Path:
    """A directory other than the repository's, holding a folder named eeray that looks like a clone (no
    __init__.py at its top, an analysis/ folder like the clone's)."""
    home = tmp_path / "home"
    (home / "eeray" / "analysis").mkdir(parents=True)
    (home / "eeray" / "studies").mkdir()
    return home


def paste(line: str, home: Path, timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    """Run one printed line as a user pasting it into a new terminal in ``home``; the process group is ended
    afterwards (whatever the command left behind: the processes this test started)."""
    proc = subprocess.Popen(["bash", "-c", line], cwd=home, env=clean_env(home, **env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        _end_group(proc)
    return subprocess.CompletedProcess(line, proc.returncode, out, err)


def _end_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


def printed_after(stdout: str, heading: str) -> str:
    """The command printed on the line after the line starting with ``heading`` (indented by four spaces)."""
    lines = stdout.splitlines()
    i = next((i for i, l in enumerate(lines) if l.startswith(heading)), None)
    assert i is not None and i + 1 < len(lines) and lines[i + 1].startswith("    "), \
        f"no command printed under {heading!r}:\n{stdout[-3000:]}"
    return lines[i + 1].strip()


# --------------------------------------------------------------------------- the commands' shape (no process)
def test_commands_name_the_interpreter_and_this_eeray_and_quote_paths(monkeypatch, tmp_path):
    py = commands.python()
    assert os.path.isabs(py) and os.access(py, os.X_OK)
    ui = commands.mlflow_ui("sqlite:////r s/mlflow.db")
    assert ui.startswith(f"{py} -m mlflow ui ") and "'sqlite:////r s/mlflow.db'" in ui  # a space stays one word
    report = commands.report(tmp_path / "a b", "width_sweep")
    assert report.startswith(f"PYTHONPATH={commands.eeray_root()} {py} -m eeray.analysis report ")
    assert f"'{tmp_path / 'a b'}'" in report
    # a resume: where the study ran, its own flags (relative paths kept: the cd keeps their meaning), the
    # study file by absolute path, and a results directory that came from the environment written out
    monkeypatch.setenv("EERAY_RESULTS_DIR", str(tmp_path / "res"))
    line = commands.resume(["studies/w.py", "--smoke", "--fresh", "--data-root", "data"], cwd=str(tmp_path))
    assert line == (f"cd {tmp_path} && {py} {tmp_path / 'studies/w.py'} --results-dir {tmp_path / 'res'} --smoke "
                    "--data-root data --resume")
    assert "--results-dir x" in commands.resume(["w.py", "--results-dir", "x"], cwd="/")  # given: not doubled
    assert commands.resume(["w.py", "--results-dir", "x"], cwd="/").count("--results-dir") == 1


# --------------------------------------------------------------------------- study files from anywhere
def python_without_eeray(tmp_path: Path) -> str:
    """An interpreter with every dependency of eeray but not eeray itself: a venv whose only site directory entry
    is this environment's site-packages, listed in a .pth file (so that directory's own .pth files, among them the
    editable install's finder, are not run). Checked below: it cannot import eeray from a neutral directory."""
    import site

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    own = subprocess.run([str(py), "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True,
                         text=True, check=True).stdout.strip()
    Path(own, "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return str(py)


def test_a_study_file_runs_from_another_directory(tmp_path):
    home = user_home(tmp_path)
    bare = python_without_eeray(tmp_path)
    probe = paste(f"{bare} -c 'import torch, ray, mlflow; import eeray'", tmp_path)
    assert probe.returncode == 1 and "No module named 'eeray'" in probe.stderr, probe.stderr[-2000:]
    study = ROOT / "studies" / "width_sweep.py"
    # eeray not installed (the study file finds its clone's eeray), then the environment's installed one
    for py in (bare, sys.executable):
        out = paste(f"{py} {study} --smoke --validate-only --results-dir {tmp_path / 'r'}", home, timeout=300)
        assert out.returncode == 0, (py, out.stdout[-2000:], out.stderr[-3000:])
        assert "valid: study 'width_sweep': 12 trial(s)" in out.stdout, out.stdout
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- every printed command, pasted
def serves_experiment(port: int, name: str) -> bool:
    url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name={name}"
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status == 200 and f'"name": "{name}"' in r.read().decode().replace('":"', '": "')
    except OSError:
        return False


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("interpreter", ["installed", "not_installed"])
def test_every_printed_command_works_pasted_into_a_fresh_shell(tmp_path, interpreter):
    """The study runs under the environment's interpreter (eeray installed, as quickstart.sh leaves it), or under
    one without eeray (a clone's study file run by another Python with the dependencies: its local Ray's workers
    must import the clone's eeray too). Either way every printed command names that interpreter."""
    home = user_home(tmp_path)
    py = sys.executable if interpreter == "installed" else python_without_eeray(tmp_path)
    # the user runs the study in their home, beside a clone named eeray, with a relative --results-dir: a local
    # Ray puts the driver's working directory on its workers' sys.path, where that folder could shadow eeray
    work = home
    proc = subprocess.Popen([py, str(STUDY), "--smoke", "--max-concurrent", "1", "--results-dir", "res"],
                            cwd=work, env=clean_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    steps = work / "res" / "integrity" / "steps"
    try:
        wait_for(lambda: steps.exists() and any(steps.rglob("*.parquet")) or proc.poll() is not None, 300,
                   "the first Parquet chunk")
        if proc.poll() is None:  # (a driver that already ended is reported below, with its output)
            os.kill(proc.pid, signal.SIGINT)  # Ctrl-C: the study stops and prints how to continue
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        _end_group(proc)
    assert proc.returncode == 130, (stdout[-3000:], stderr[-3000:])

    # the resume, pasted from another directory: it finishes the study and prints the report and MLflow commands
    resume = printed_after(stdout, "Interrupted:")
    out = paste(resume, home)
    assert out.returncode == 0, (resume, out.stdout[-3000:], out.stderr[-3000:])
    assert "integrity: 2 trials (2 completed, 0 failed)" in out.stdout, out.stdout[-3000:]

    report = printed_after(out.stdout, "Report:")
    got = paste(report, home, timeout=300)
    assert got.returncode == 0, (report, got.stderr[-3000:])
    assert (work / "res" / "integrity" / "report" / "index.html").is_file()

    # the sync command (printed when MLflow was unreachable), pasted: idempotent on a complete mirror
    sync = commands.mlflow_sync(work / "res", "integrity")
    got = paste(sync, home, timeout=300)
    assert got.returncode == 0, (sync, got.stderr[-3000:])

    # the MLflow UI: the printed line, on a free port instead of 5000 (other tests and users share this machine)
    ui = printed_after(out.stdout, "MLflow:")
    assert ui == printed_after(stdout, "MLflow:") and ui.startswith(f"{py} -m mlflow ui ") and " --port 5000" in ui
    port = free_port()
    server = subprocess.Popen(["bash", "-c", ui.replace(" --port 5000", f" --port {port}")], cwd=home,
                              env=clean_env(home), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        wait_for(lambda: serves_experiment(port, "integrity") or server.poll() is not None, 180,
                   "the MLflow UI to serve the study's experiment")
        assert server.poll() is None, server.stderr.read()[-3000:]
        # under the command, on its own line, the address of the study's runs: the experiment this server serves,
        # in the execution's saved view, which the store holds (tests/test_mlflow_ui.py opens it in a browser)
        lines = out.stdout.splitlines()
        address = lines[lines.index(f"    {ui}") + 1].strip()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?"
                                    "experiment_name=integrity", timeout=10) as r:
            exp = json.load(r)["experiment"]
        execution = json.loads((work / "res" / "integrity" / "execution.json").read_text())["execution"]
        assert address == classic_view_url("http://127.0.0.1:5000", exp["experiment_id"], view_key(execution))
        assert VIEW_TAG_PREFIX + view_key(execution) in {t["key"] for t in exp.get("tags", [])}
    finally:
        _end_group(server)
