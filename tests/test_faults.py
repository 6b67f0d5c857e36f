"""Issue 25: faults a user meets in the record, through the real CLI. Each test asserts what must happen instead
of the fault: the documented exit status, one message naming what is wrong and the choices, every (trial, step)
row exactly once against an undisturbed run, and nothing from the results directory executed."""
import os
import shutil

import nbformat
import pytest
from conftest import ROOT, run_study, smoke_stderr
from nbclient import NotebookClient

from eeray.results import load

ALL_FAILED = "tests/studies/all_failed_study.py"


@pytest.mark.slow
def test_every_trial_failed_exits_3_with_a_summary_that_says_so_and_the_notebook_runs(smoke, tmp_path):
    """Item 6: the width sweep with every trial diverging. The study's own summary (width_sweep.summarize: the
    association, stability and survival tables) and analysis/width_vs_alignment.ipynb crashed on a record with no
    completed trial ("'association' is not in list"), turning exit 3 into a traceback and exit 1."""
    # its own Ray: the trials import width_sweep (the study's summarize) through the PYTHONPATH the study file sets,
    # which only a Ray started by this driver inherits
    # (shared with tests/test_outside_readers.py, which reads its empty tables)
    record, stdout = smoke(ALL_FAILED, expect=3, own_ray=True)
    res = load(record, "all_failed")
    assert len(res.trials) == 3 and set(res.trials.status) == {"failed"}
    assert res.trials.failure_reason.str.contains("training loss is").all()
    assert "all_failed: 3 trials (0 completed, 3 failed)" in stdout
    assert "Every trial failed (3 of 3; each one's reason is above): no completed trial to summarize" in stdout
    assert "Traceback" not in smoke_stderr(record) and "Interrupted" not in stdout
    assert not (record / "all_failed" / "summary.csv").exists()  # no table of verdicts from no trials

    # the notebook a user opens next, on the same record (found as the repository's results, as from analysis/)
    repo = tmp_path / "repo"
    (repo / "analysis").mkdir(parents=True)
    shutil.copytree(record / "all_failed", repo / "results" / "width_sweep")
    nb = nbformat.read(ROOT / "analysis" / "width_vs_alignment.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(repo / "analysis")}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, [(o["ename"], o["evalue"]) for o in errors]
    partial = next(c for c in code if "plot_partial_intervals" in c.source)
    assert any("image/png" in o.get("data", {}) for o in partial.outputs)  # a figure saying why, not an error


# --------------------------------------------------------------------------- items 3 and 4: the record on disk
INTEGRITY = "tests/studies/integrity_study.py"


@pytest.fixture(scope="module")
def undisturbed(smoke):
    """The integrity study (two trials) run to its end, untouched: the reference each disturbed copy is compared
    with, and the copy a user damages (shared with tests/test_integrity_runner.py: read only)."""
    return smoke(INTEGRITY)[0]


def _damaged_copy(reference, tmp_path, table_dir: str):
    """A copy of the reference results directory and, in it, the one (compacted) file of ``table_dir``."""
    copy = tmp_path / "copy"
    shutil.copytree(reference, copy)
    (victim,) = (copy / "integrity" / table_dir).glob("*.parquet")
    return copy, victim


def _snapshot(results):
    return {p.relative_to(results): p.read_bytes() for p in sorted((results / "integrity").rglob("*"))
            if p.is_file() and "_tune" not in p.parts and p.name != ".eeray.lock"}


def _tree(results):
    """Every file of a results directory (MLflow's store and Tune's state included) but the lock a driver takes."""
    return {p.relative_to(results): p.read_bytes() for p in sorted(results.rglob("*"))
            if p.is_file() and p.name != ".eeray.lock"}


def _resumed_equals_reference(copy, reference):
    """--resume, once the damaged file is back, ends with every trial's rows exactly as the undisturbed run's."""
    from conftest import check_mlflow, rows_of, same_rows

    run_study(INTEGRITY, copy, "--smoke", "--resume")
    ref = load(reference, "integrity")
    res = load(copy, "integrity")
    assert not res.steps.duplicated(["trial_id", "step", "phase"]).any()
    assert sorted(res.trials.trial_id) == sorted(ref.trials.trial_id)
    for trial_id in ref.trials.trial_id:
        assert same_rows(rows_of(copy, "integrity", trial_id), rows_of(reference, "integrity", trial_id)), trial_id
    check_mlflow(copy, "integrity", ref.trials.trial_name)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_corrupt_record_file_is_an_error_naming_it_and_resume_refuses(undisturbed, tmp_path, damage):
    """Item 3: a truncated or garbage Parquet file. eeray.results.load dropped it silently (fewer trials and rows,
    and the report said so); --resume then waited forever for a trial Tune held as done. Now load fails naming
    the file, and --resume refuses before Ray starts (exit 2), naming it and the choices, touching nothing."""
    from eeray.results import RecordFileError

    copy, victim = _damaged_copy(undisturbed, tmp_path, "steps/dataset=sine/phase=explore")
    good = victim.read_bytes()
    victim.write_bytes(good[:len(good) // 2] if damage == "truncated" else bytes(range(256)) * 8)
    with pytest.raises(RecordFileError, match=str(victim)):
        load(copy, "integrity")
    before = _snapshot(copy)
    out = run_study(INTEGRITY, copy, "--smoke", "--resume", expect=2)
    err = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "unreadable Parquet file(s)" in err[0], out.stderr
    assert f"  {victim}: " in out.stderr and "--fresh" in out.stderr and "restore the file(s)" in out.stderr
    assert "Ray:" not in out.stdout and "Traceback" not in out.stderr  # refused before Ray started
    assert _snapshot(copy) == before  # nothing deleted, rewritten or compacted by the refusal

    victim.write_bytes(good)  # the first choice: the file restored from a copy
    # the directory is the undisturbed one again, file for file (the refusal wrote nothing): what --resume makes of
    # exactly this directory is the last step of the deleted-file test below, one resume for every damage
    assert _tree(copy) == _tree(undisturbed)


@pytest.mark.slow
def test_a_record_file_deleted_by_hand_is_named_at_resume_and_refused(undisturbed, tmp_path):
    """Item 4: a file of the record deleted by hand, then --resume: it exited 0 with "2 completed" and rows missing.
    The trials row holds how many rows each trial wrote; --resume compares and refuses, naming the trials."""
    copy, victim = _damaged_copy(undisturbed, tmp_path, "steps/dataset=sine/phase=exploit")
    good = victim.read_bytes()
    ref = load(undisturbed, "integrity")
    assert (ref.trials.steps_rows == ref.steps.groupby("trial_id").size()[ref.trials.trial_id].to_numpy()).all()
    exploit = ref.steps[ref.steps.phase == "exploit"].groupby("trial_id").size()
    victim.unlink()
    before = _snapshot(copy)
    out = run_study(INTEGRITY, copy, "--smoke", "--resume", expect=2)
    err = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "lacks rows that its trials wrote" in err[0], out.stderr
    for trial_id, name, wrote in zip(ref.trials.trial_id, ref.trials.trial_name, ref.trials.steps_rows):
        assert (f"trial '{name}' ({trial_id}, completed): steps holds {wrote - exploit[trial_id]} of its {wrote} rows"
                in out.stderr), out.stderr
    assert "--fresh" in out.stderr and "Ray:" not in out.stdout and "Traceback" not in out.stderr
    assert _snapshot(copy) == before

    victim.write_bytes(good)
    assert _tree(copy) == _tree(undisturbed)  # the directory a corrupt file's restore also leaves
    _resumed_equals_reference(copy, undisturbed)


# --------------------------------------------------------------------------- item 2: checkpoint storage full
_FULL_THEN_FREED = """
set -u
mount -t tmpfs -o size=300k tmpfs "$STORAGE" || exit 90
"$@" >"$OUT/first.txt" 2>&1; echo $? >"$OUT/first.rc"
mount -o remount,size=50m "$STORAGE" || exit 91  # the user frees space
"$@" --resume >"$OUT/second.txt" 2>&1; echo $? >"$OUT/second.rc"
"""


@pytest.mark.slow
def test_a_full_checkpoint_storage_leaves_a_whole_record_and_resume_completes_it_once(undisturbed, tmp_path):
    """Item 2: --storage on a file system that fills up. A checkpoint that could not be stored took its chunk's rows
    with it while the trial's count kept them, so the record lacked rows its trials wrote and --resume refused
    ('steps holds 0 of its 3 rows', exit 2). Now the failure carries those rows; once space is freed, --resume
    continues each failed trial from its last checkpoint, and its failure chunk is dropped for the chunks it
    re-emits: every row once, each trial as the undisturbed run's."""
    storage, results = tmp_path / "storage", tmp_path / "results"
    storage.mkdir()
    _run_in_mount_namespace(_FULL_THEN_FREED, results, storage, tmp_path, STORAGE=str(storage))
    first, second = (tmp_path / "first.txt").read_text(), (tmp_path / "second.txt").read_text()
    assert (tmp_path / "first.rc").read_text().strip() == "3", first[-3000:]  # trials failed: the disk was full
    assert "OSError: [Errno 28] No space left on device" in first
    assert (tmp_path / "second.rc").read_text().strip() == "0", second[-3000:]
    assert "integrity: 12 trials (12 completed, 0 failed)" in second
    _every_row_once_as_undisturbed(results, undisturbed)
    assert not list((results / "integrity").rglob("*-999999999-failed.parquet"))


def _run_in_mount_namespace(script: str, results, storage, out, **env) -> None:
    """The integrity study (12 seeds, its own Ray) run by ``script`` inside a mount namespace of its own, where the
    script mounts a small file system; ``$@`` is the study's command line, ``$OUT`` where its outputs go."""
    import subprocess
    import sys

    cmd = [sys.executable, str(ROOT / INTEGRITY), "--results-dir", str(results), "--storage", str(storage / "st"),
           "--smoke"]  # its own Ray, inside the mount namespace that holds the small file system
    ns = ["unshare", "--mount", "--propagation", "private"] + ([] if os.geteuid() == 0 else ["--map-root-user"])
    done = subprocess.run(ns + ["sh", "-c", script, "sh", *cmd], cwd=ROOT, capture_output=True, text=True,
                          timeout=900, env={**os.environ, **env, "OUT": str(out),
                                            "EERAY_TEST_SEEDS": ",".join(map(str, range(12)))})
    assert done.returncode == 0 and "mount" not in done.stderr, done.stderr  # the small file system was made


def _every_row_once_as_undisturbed(results, undisturbed) -> None:
    """12 trials, every step row once, each trial's count the rows it holds, seeds 0 and 1 trained as the
    undisturbed run trained them."""
    from conftest import comparable

    res = load(results, "integrity")
    assert not res.steps.duplicated(["trial_id", "step", "phase"]).any() and len(res.trials) == 12
    held = res.steps.groupby("trial_id").size()
    assert (res.trials.set_index("trial_id").steps_rows == held).all()  # each trial's count: the rows it holds
    got, want = comparable(res), comparable(load(undisturbed, "integrity"))
    names = want[0].index  # seeds 0 and 1
    assert got[0].loc[names].equals(want[0])
    assert got[1][got[1].trial_id.isin(names)].reset_index(drop=True).equals(want[1])


_RESULTS_FILLED_THEN_FREED = """
set -u
mount -t tmpfs -o size=32m tmpfs "$RESULTS" || exit 90
"$@" >"$OUT/first.txt" 2>&1 &
pid=$!
until ls "$RESULTS"/integrity/steps/*/*/*.parquet >/dev/null 2>&1; do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
dd if=/dev/zero of="$RESULTS/ballast" bs=64k >/dev/null 2>&1  # something else fills the disk, to the last block
wait $pid; echo $? >"$OUT/first.rc"
find "$RESULTS" -name '.*.tmp' >"$OUT/part-files.txt"
rm "$RESULTS/ballast"  # the user frees space
"$@" --resume >"$OUT/second.txt" 2>&1; echo $? >"$OUT/second.rc"
cp -a "$RESULTS" "$OUT/record"  # the mount goes with the namespace
"""


@pytest.mark.slow
def test_a_full_results_disk_stops_the_study_naming_the_file_and_resume_completes_it_once(undisturbed, tmp_path):
    """Item 2, the results directory: the disk holding the record fills while trials run (Tune's checkpoints are
    elsewhere). The driver died with two tracebacks (the chunk's, then execution.json's hiding it, exit 1) and left
    a part file. Now it stops with one message naming the file and the command that continues, exit 1, and no
    part file; once space is freed, --resume completes every trial: every row once, each as undisturbed."""
    from conftest import check_mlflow

    results, storage = tmp_path / "results", tmp_path / "storage"
    results.mkdir()
    _run_in_mount_namespace(_RESULTS_FILLED_THEN_FREED, results, storage, tmp_path, RESULTS=str(results))
    first, second = (tmp_path / "first.txt").read_text(), (tmp_path / "second.txt").read_text()
    assert (tmp_path / "first.rc").read_text().strip() == "1", first[-3000:]
    errors = [line for line in first.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "the study stopped: its record could not be written: [Errno 28] No space left on " \
        f"device: {results}/integrity/" in errors[0], first[-3000:]
    assert "Traceback" not in first and "Continue with:" in first and "--resume" in first
    assert (tmp_path / "part-files.txt").read_text() == ""  # nothing half-written, no space held by a part file
    assert (tmp_path / "second.rc").read_text().strip() == "0", second[-3000:]
    assert "integrity: 12 trials (12 completed, 0 failed)" in second
    record = tmp_path / "record"
    _every_row_once_as_undisturbed(record, undisturbed)
    check_mlflow(record, "integrity", load(record, "integrity").trials.trial_name)  # the runs the full disk cut off are closed


# --------------------------------------------------------------------------- item 5: a copied results directory
def _files(root):
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_a_copied_results_directory_resumes_in_the_copy_and_writes_nothing_outside_it(undisturbed, tmp_path):
    """Item 5: a study interrupted in A, ``cp -a A B``, A moved away, ``--resume --results-dir B``. Tune's search
    generator kept A's absolute path for the trials it had yet to create (they failed for good: "Unable to set up
    cluster storage", ``storage_fs_path=…/A/…``) and MLflow's store kept A's artifact root (the artifacts went into
    A, recreating it). Now the copy resumes to exactly the undisturbed rows, and nothing is written outside it."""
    import signal
    import subprocess

    from conftest import comparable, study_argv, wait_for
    from mlflow.tracking import MlflowClient

    original, copy, kept = tmp_path / "A", tmp_path / "B", tmp_path / "A-kept"
    proc = subprocess.Popen(study_argv(INTEGRITY, original, "--smoke", "--max-concurrent", "1"), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: any((original / "integrity" / "steps").rglob("*.parquet")), 240, "the first Parquet chunk")
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, (stdout[-3000:], stderr[-3000:])
    assert len(load(original, "integrity").trials) < 2  # a trial is left for the copy to create and run
    shutil.copytree(original, copy, symlinks=True)
    original.rename(kept)
    before = _files(kept)

    out = run_study(INTEGRITY, copy, "--smoke", "--max-concurrent", "1", "--resume")
    res = load(copy, "integrity")
    assert not res.steps.duplicated(["trial_id", "step", "phase"]).any() and not res.trials.trial_name.duplicated().any()
    got, want = comparable(res), comparable(load(undisturbed, "integrity"))  # by trial name: the ids differ
    assert got[0].equals(want[0]), (got[0], want[0])
    assert got[1].equals(want[1])
    assert "note: resume: Tune's state of segment 'tune' was written under " + str(original) in out.stdout
    assert f"note: MLflow's artifacts were under {original.as_uri()}/mlartifacts" in out.stdout
    assert not original.exists()  # nothing written to (or recreating) the directory it was copied from
    assert _files(kept) == before
    client = MlflowClient(f"sqlite:///{copy / 'mlflow.db'}")
    exp = client.get_experiment_by_name("integrity")
    assert exp.artifact_location == (copy / "mlartifacts").as_uri()
    runs = client.search_runs([exp.experiment_id])
    assert runs and all(r.info.artifact_uri.startswith((copy / "mlartifacts").as_uri() + "/") for r in runs)
    for r in runs:  # every run's artifacts (those logged in A, copied along, and those logged in B) are found
        assert client.list_artifacts(r.info.run_id), r.info.run_name


# --------------------------------------------------------------------------- item 7: where the record is written
def _run_read_only(path, *args: str):
    """The study's CLI with ``args``, where ``path`` is read-only: a read-only bind mount in a mount namespace of
    its own for root (root writes through permission bits: only a read-only mount stops it), its write bits
    removed for any other user. Returns the CompletedProcess."""
    import os
    import subprocess
    import sys

    cmd = [sys.executable, str(ROOT / INTEGRITY), *map(str, args)]
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(mode & ~0o222)
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
        finally:
            path.chmod(mode)
    script = 'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" "$1" && shift && exec "$@"'
    out = subprocess.run(["unshare", "--mount", "sh", "-c", script, "sh", str(path), *cmd], capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert "mount:" not in out.stderr and "unshare:" not in out.stderr, out.stderr  # the read-only mount was made
    return out


def _one_error_line(out) -> str:
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 2 and len(errors) == 1, (out.returncode, out.stdout[-2000:], out.stderr[-3000:])
    assert "Traceback" not in out.stderr and "Ray:" not in out.stdout  # refused before Ray started
    return errors[0]


@pytest.mark.slow
def test_read_only_destinations_and_a_4000_character_results_dir_are_one_error_line(undisturbed, tmp_path):
    """Item 7 (rest): a read-only study directory at --resume and a read-only --storage ended in tracebacks
    (exit 1); a results directory of 4,000 characters retried MLflow's SQLite store for 100 s. Each is now one
    'error:' line naming the path, exit 2, before Ray starts."""
    import time

    copy = tmp_path / "copy"
    shutil.copytree(undisturbed, copy)
    err = _one_error_line(_run_read_only(copy / "integrity", "--results-dir", copy, "--smoke", "--resume"))
    assert f"{copy / 'integrity'} is not writable" in err and "choose another --results-dir" in err, err

    empty = tmp_path / "empty"
    empty.mkdir()
    err = _one_error_line(_run_read_only(empty, "--results-dir", empty, "--smoke"))
    assert str(empty) in err and "writable" in err, err

    storage, fresh = tmp_path / "storage", tmp_path / "fresh"
    storage.mkdir()
    err = _one_error_line(_run_read_only(storage, "--results-dir", fresh, "--storage", storage, "--smoke"))
    assert f"--storage {storage}: {storage} is not writable" in err and "choose another --storage" in err, err
    assert not (fresh / "integrity" / "execution.json").exists() and not any(storage.iterdir())

    deep = tmp_path.joinpath(*["d" * 200] * ((4000 - len(str(tmp_path))) // 201))
    assert 3800 < len(str(deep)) <= 4000
    t0 = time.monotonic()
    out = run_study(INTEGRITY, deep, "--smoke", expect=2)
    err = _one_error_line(out)
    assert time.monotonic() - t0 < 60, "refused at once, not after MLflow's retries"
    assert f"{deep / 'mlflow.db'} would be a path of" in err and "SQLite opens at most 504" in err, err
    assert not deep.exists()  # nothing created


# --------------------------------------------------------------------------- item 8: nothing in the results directory runs
class _WritesAFile:
    """A pickle payload: unpickling it calls exec, which writes ``marker`` (what a crafted file could do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


@pytest.mark.slow
def test_a_crafted_searcher_state_is_refused_at_resume_and_runs_nothing(undisturbed, tmp_path):
    """Item 8: a searcher-state-*.pkl under _tune/ that someone with write access to the results directory crafted.
    eeray unpickled it with pickle.loads on --resume (and its searcher's restore with pickle.load): the payload ran.
    Now it is read by a restricted unpickler before Ray starts: refused, naming the file and the global; the marker
    the payload would write is never created."""
    import pickle

    copy = tmp_path / "copy"
    shutil.copytree(undisturbed, copy)
    state = max((copy / "integrity" / "_tune" / "tune").glob("searcher-state-*.pkl"))
    good = state.read_bytes()
    marker = tmp_path / "marker"
    state.write_bytes(pickle.dumps({"_points": [], "_suggested": _WritesAFile(marker)}))
    out = run_study(INTEGRITY, copy, "--smoke", "--resume", expect=2)
    err = _one_error_line(out)
    assert f"{state}: refused to load builtins.exec" in err and "--fresh" in err, err
    assert not marker.exists()

    # the file restored, the directory is the undisturbed one, file for file (the refusal wrote nothing): its
    # --resume, which loads eeray's own searcher state through the same reader, is the deleted-file test's last step
    state.write_bytes(good)
    assert _tree(copy) == _tree(undisturbed)


def test_searcher_states_round_trip_through_the_restricted_unpickler(tmp_path):
    """What eeray's searchers save is what the restricted unpickler resolves: an Optuna-backed grid (completed,
    failed and open trials) and a points searcher with branching (saved as its segment's name, not the object)."""
    from ray import tune

    from eeray.raytune import branches
    from eeray.raytune.safe_pickle import UnsafeState, load_searcher_state
    from eeray.raytune.searchers import GridOptunaSearch, PointsSearch

    grid = GridOptunaSearch([{"seed": 0}, {"seed": 1}], {"optim.lr": tune.loguniform(1e-3, 1e-1),
                                                          "model.fc_width": tune.choice([8, 16]),
                                                          "train.batch_size": tune.randint(8, 64)},
                            metric="train_error", mode="min", samples_per_point=4, seed=0)
    for i in range(6):
        grid.suggest(f"t{i}")
        if i % 3 == 0:
            grid.on_trial_complete(f"t{i}", {"train_error": i / 10})
        elif i % 3 == 1:
            grid.on_trial_complete(f"t{i}", None, error=True)
    grid.save(str(tmp_path / "grid.pkl"))
    again = GridOptunaSearch.__new__(GridOptunaSearch)
    again.restore(str(tmp_path / "grid.pkl"))
    assert again._remaining == grid._remaining and again._owner == grid._owner
    assert again.suggest("t6") is not None  # the restored Optuna studies work

    segment = branches.Branching({}, str(tmp_path / "states"), "tune")
    points = PointsSearch([{"seed": 0}], segment, ["seed=0"])
    points.save(str(tmp_path / "points.pkl"))
    assert load_searcher_state((tmp_path / "points.pkl").read_bytes(), "points.pkl")["_branching"] == "tune"
    with pytest.raises(UnsafeState, match="refused to load builtins.exec"):
        load_searcher_state(__import__("pickle").dumps(_WritesAFile(tmp_path / "marker")), "crafted.pkl")
    assert not (tmp_path / "marker").exists()


def test_a_crafted_branch_point_state_is_refused_and_runs_nothing(tmp_path):
    """Item 8: branch-point states are read with torch.load(weights_only=True), as trial checkpoints are: a state
    file crafted to run code is refused and the marker it would write is never created."""
    import pickle

    import torch

    from eeray.branch_states import BranchStateStore

    store = BranchStateStore(str(tmp_path / "states"))
    store.put("tree", 5, {"model": {"w": torch.ones(2)}, "step": 5})
    assert store.get("tree", 5)["step"] == 5  # what put saves loads with weights_only
    marker = tmp_path / "marker"
    store.write(store.path("tree", f"{7:09d}.pt"), pickle.dumps({"step": _WritesAFile(marker)}, protocol=2))
    with pytest.raises(pickle.UnpicklingError):
        store.get("tree", 7)
    assert not marker.exists()


# --------------------------------------------------------------------------- also seen: two drivers on a fresh store
_OPEN_STORE = """
import sys, time
from eeray.mlflow_mirror import MlflowTracker
results, study, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
time.sleep(max(0.0, start - time.time()))  # both processes, MLflow imported, open the store at the same instant
t = MlflowTracker(f"sqlite:///{results}/mlflow.db", study, f"{results}/mlartifacts")
print(t.experiment_id)
"""


def test_two_drivers_opening_a_fresh_mlflow_store_at_once_both_get_their_experiment(tmp_path):
    """Two studies started at the same moment on a fresh results directory both ran MLflow's schema migrations on
    the new mlflow.db; one failed ("duplicate column name: step", "table experiments already exists", ...) and its
    mirror turned itself off. The first use of the store is now held under a lock (eeray/mlflow_store.py)."""
    import os
    import subprocess
    import sys
    import time

    from mlflow.tracking import MlflowClient

    for attempt in range(2):  # without the lock, 6 of 6 such attempts had a driver fail (2 cores)
        results = tmp_path / f"results{attempt}"
        results.mkdir()
        start = time.time() + 7  # after both have imported MLflow
        procs = [subprocess.Popen([sys.executable, "-c", _OPEN_STORE, str(results), study, str(start)], cwd=ROOT,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for study in ("first", "second")]
        outs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
        client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
        ids = {client.get_experiment_by_name(s).experiment_id for s in ("first", "second")}
        assert ids == {out.strip() for out, _ in outs} and len(ids) == 2
