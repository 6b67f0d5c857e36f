"""Tune's storage replaces every file atomically: a driver killed while Tune uploads its experiment state leaves the
previous state readable (the CI failure this guards against: a kill during the upload left an empty
experiment_state-*.json, and --resume could not restore it)."""
import json
import os
import pickle
import subprocess
import sys

import pyarrow.fs as pafs
import pytest

from eeray.raytune.atomic_storage import AtomicLocalHandler, _ReplacingFile, tune_storage, unreadable_state

STATE = "experiment_state-2026-12-02_00-00-00.json"


def test_a_local_path_gets_the_atomic_file_system_and_an_object_store_uri_its_own(tmp_path):
    path, fs = tune_storage(f"file://{tmp_path}")
    assert path == str(tmp_path) and fs.type_name == "py::eeray-atomic-local"
    assert tune_storage("gs://bucket/studies") == ("gs://bucket/studies", None)  # s3://: tests/test_s3_storage.py
    rel, _ = tune_storage("relative/dir")
    assert os.path.isabs(rel)


def test_copy_files_through_it_writes_the_same_bytes_and_leaves_no_temporary(tmp_path):
    src, dst = tmp_path / "staging", tmp_path / "storage"
    (src / "trial" / "checkpoint_000001").mkdir(parents=True)
    (src / STATE).write_text(json.dumps({"trial_data": list(range(1000))}))
    (src / "trial" / "checkpoint_000001" / "state.pt").write_bytes(os.urandom(3 << 20))  # several chunks
    path, fs = tune_storage(str(dst))
    pafs.copy_files(str(src), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    for f in src.rglob("*"):
        if f.is_file():
            assert (dst / f.relative_to(src)).read_bytes() == f.read_bytes()
    assert not [p for p in dst.rglob("*.tmp")]
    fs.copy_file(str(dst / STATE), str(dst / "copy.json"))
    assert (dst / "copy.json").read_bytes() == (src / STATE).read_bytes()


def test_a_failed_write_keeps_the_old_version_and_discards_the_new(tmp_path):
    class FullDisk:  # the temporary file's writes fail as on a full disk
        closed = False

        def write(self, data):
            raise OSError(28, "No space left on device")

        def close(self):
            FullDisk.closed = True

    target = tmp_path / STATE
    target.write_text('{"old": 1}')
    out = _ReplacingFile(str(target))
    out._file.close()
    out._file = FullDisk()
    with pytest.raises(OSError, match="No space"):
        out.write(b'{"new"')
    out.close()
    assert target.read_text() == '{"old": 1}' and not list(tmp_path.glob(".*.tmp"))


def test_a_kill_in_the_middle_of_writing_the_experiment_state_leaves_the_old_one_readable(tmp_path):
    target = tmp_path / STATE
    target.write_text(json.dumps({"version": 1}))
    code = ("import sys; from eeray.raytune.atomic_storage import tune_storage\n"
            "_, fs = tune_storage(sys.argv[1])\n"
            "with fs.open_output_stream(sys.argv[2]) as out:\n"
            "    out.write(b'{\"version\": ')\n"  # the fault point fires here: SIGKILL, as a lost power supply
            "    out.write(b'2}')\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path), str(target)], capture_output=True,
                          env={**os.environ, "EERAY_KILL_AT": "tune_state:1"}, timeout=120)
    assert proc.returncode == -9, proc.stderr
    assert json.loads(target.read_text()) == {"version": 1} and unreadable_state(str(tmp_path)) is None


def test_the_handler_pickles_for_the_trials_on_other_nodes(tmp_path):
    _, fs = tune_storage(str(tmp_path))
    again = pickle.loads(pickle.dumps(fs))
    assert again == fs and isinstance(again.handler, AtomicLocalHandler)
    with again.open_output_stream(str(tmp_path / "x.json")) as out:
        out.write(b"{}")
    assert (tmp_path / "x.json").read_text() == "{}"


def test_an_unreadable_newest_state_is_named_and_an_older_session_is_not_chosen(tmp_path):
    assert unreadable_state(str(tmp_path)) is None  # no state: a segment that never started
    (tmp_path / "experiment_state-2026-12-01_00-00-00.json").write_text("{}")
    assert unreadable_state(str(tmp_path)) is None
    (tmp_path / STATE).write_text("")  # newer, cut short
    why = unreadable_state(str(tmp_path))
    assert why is not None and STATE in why and "JSONDecodeError" in why


def test_a_truncated_copy_of_the_experiment_state_never_replaces_a_whole_one(tmp_path):
    """Tune rewrites its staging file in place while the previous upload may still read it: the upload can carry
    an empty or cut copy. Only a state that parses replaces the stored one; other files are written as they are."""
    target = tmp_path / STATE
    target.write_text('{"trial_data": [1]}')
    _, fs = tune_storage(str(tmp_path))
    for cut in (b"", b'{"trial_data": [1, 2'):
        with fs.open_output_stream(str(target)) as out:
            out.write(cut)
        assert target.read_text() == '{"trial_data": [1]}' and not list(tmp_path.glob(".*.tmp"))
    with fs.open_output_stream(str(target)) as out:
        out.write(b'{"trial_data": [1, 2]}')
    assert json.loads(target.read_text()) == {"trial_data": [1, 2]}
    with fs.open_output_stream(str(tmp_path / "result.json")) as out:
        out.write(b'{"cut')
    assert (tmp_path / "result.json").read_text() == '{"cut'
