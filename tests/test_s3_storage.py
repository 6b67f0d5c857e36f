"""``--storage s3://bucket/prefix`` against a real S3-protocol server: moto's, started by this module on 127.0.0.1
(a free port, loopback only) and reached through AWS's standard environment (``AWS_ENDPOINT_URL``, keys,
region), as a user reaches MinIO or Ceph. Tune's checkpoints, the branch-point states and the resume check live
in the bucket; a driver killed mid-study resumes from it with every row once; a missing bucket, refused
credentials and an unreachable endpoint are each refused before anything runs with one ``error:`` line.

Every study runs through the real CLI (``python tests/studies/branching_study.py``) on a real local Ray.
"""
import io
import json
import logging
import os
import pickle
import subprocess
import sys
import threading
import time

import boto3
import pandas as pd
import pyarrow.fs as pafs
import pytest
import torch
from conftest import ROOT, free_port, reap_killed, rows_of, run_study, same_rows
from moto import settings as moto_settings
from moto.server import ThreadedMotoServer
from test_branching_runner import STUDY, TREE, assert_same_tables

from eeray.branch_states import BranchStateStore
from eeray.raytune import s3
from eeray.raytune.atomic_storage import tune_storage, unreadable_state
from eeray.raytune.branches import Branching
from eeray.results import load

BUCKET = "eeray-test"
TRUNK = "ee eps=0.01 tau0=0.75"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A moto S3 server on loopback with one bucket; ``env``: what a user exports to use it (no ~/.aws read)."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not one line per request under pytest -s
    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    host, port = srv.get_host_and_port()
    none = str(tmp_path_factory.mktemp("aws") / "absent")  # this machine's own AWS files play no part
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ENDPOINT_URL_S3": "", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "", "AWS_REGION": "us-east-1",
           "AWS_DEFAULT_REGION": "", "AWS_PROFILE": "", "AWS_CONFIG_FILE": none, "AWS_SHARED_CREDENTIALS_FILE": none,
           "AWS_EC2_METADATA_DISABLED": "true"}
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket=BUCKET)
    # versioned, as S3 buckets can be: a deleted object leaves its versions, so a test can see what was written
    # to the bucket after eeray deleted it (a completed trial's checkpoints)
    client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    yield env, client
    srv.stop()


@pytest.fixture
def aws_env(server, monkeypatch):
    """This process in the server's environment (for the in-process checks)."""
    for k, v in server[0].items():
        monkeypatch.setenv(k, v)
    return server[0]


def keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def ever_written(client, prefix: str) -> set[str]:
    """Every key written under ``prefix``, deleted ones included (their versions stay in a versioned bucket)."""
    pages = client.get_paginator("list_object_versions").paginate(Bucket=BUCKET, Prefix=prefix)
    return {v["Key"] for page in pages for v in page.get("Versions", [])}


@pytest.fixture(scope="module")
def runs(server, tmp_path_factory):
    """The branching study undisturbed, once with its default local storage and once on s3://."""
    env, _ = server
    local, remote = tmp_path_factory.mktemp("local"), tmp_path_factory.mktemp("s3")
    for results, args in ((local, ()), (remote, ("--storage", f"s3://{BUCKET}/undisturbed"))):
        out = run_study(STUDY, results, "--smoke", *args, env=env, own_ray=True)  # trials need the S3 env
        assert "5 trials (5 completed, 0 failed)" in out.stdout
        assert "branching: 1 trunk(s) explore once for 3 branch(es)" in out.stdout, out.stdout
    return local, remote


# --------------------------------------------------------------------------- the pieces, in this process
def test_the_endpoint_comes_from_the_environment_and_travels_with_the_pickled_file_system(aws_env, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", aws_env["AWS_ENDPOINT_URL"])  # the S3-specific one wins ...
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # ... over the general one (nothing listens)
    path, fs = tune_storage(f"s3://{BUCKET}/studies")
    assert path == f"{BUCKET}/studies" and fs.type_name == "py::eeray-checked-s3"
    shipped = pickle.dumps(fs)  # what Tune sends to a trial on another node
    for var in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):  # a node whose environment names no endpoint
        monkeypatch.delenv(var)
    assert pickle.loads(shipped).get_file_info(BUCKET).type == pafs.FileType.Directory
    monkeypatch.setenv("AWS_ENDPOINT_URL", "127.0.0.1:9000")
    with pytest.raises(s3.StorageError, match=r"AWS_ENDPOINT_URL='127.0.0.1:9000': expected the server's URL"):
        s3.filesystem(BUCKET)


def test_an_experiment_state_cut_short_never_replaces_the_whole_one_in_the_bucket(aws_env, server):
    path, fs = tune_storage(f"s3://{BUCKET}/cut")
    state = f"{path}/experiment_state-2026-12-01_00-00-00.json"
    whole = json.dumps({"trial_data": list(range(1000))}).encode()
    for data in (whole, whole[:100]):  # the second: an upload that read Tune's staging file mid-rewrite
        with fs.open_output_stream(state) as f:
            f.write(data)
    with fs.open_input_stream(state) as f:
        assert f.readall() == whole
    with fs.open_output_stream(f"{path}/searcher-state.pkl") as f:  # any other file is written as it is
        f.write(b"not json")
    assert server[1].get_object(Bucket=BUCKET, Key="cut/searcher-state.pkl")["Body"].read() == b"not json"


def test_tunes_threaded_upload_of_many_files_through_it_completes(aws_env, server, tmp_path):
    """Ray's copy_files uploads with pyarrow's I/O threads through eeray's handler: more files than threads,
    each closed on one of them, must not wait on that pool (apache/arrow#15233)."""
    files = {f"trial{i:02d}/checkpoint_000001/trial.pt": os.urandom(100_000 + i) for i in range(40)}
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    path, fs = tune_storage(f"s3://{BUCKET}/threads")
    copy = threading.Thread(target=pafs.copy_files, args=(str(tmp_path), path),
                            kwargs={"destination_filesystem": fs, "use_threads": True}, daemon=True)
    copy.start()
    copy.join(120)
    assert not copy.is_alive(), "copy_files hung"
    for name, data in files.items():
        assert server[1].get_object(Bucket=BUCKET, Key=f"threads/{name}")["Body"].read() == data, name


def test_a_trial_on_a_node_without_the_endpoint_variable_finds_the_branch_states(aws_env, server, monkeypatch):
    shipped = pickle.dumps(Branching({}, f"s3://{BUCKET}/nodes/branch_states/tune", "tune-nodes"))
    for var in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):  # the trial's node: no endpoint in its environment
        monkeypatch.delenv(var)
    store = pickle.loads(shipped).store
    store.put("tree", 12, {"w": torch.ones(2)})
    assert store.has("tree", 12) and keys(server[1], "nodes/") == ["nodes/branch_states/tune/tree/000000012.pt"]


def test_branch_states_are_whole_objects_and_load_only_tensors(aws_env, server):
    store = BranchStateStore(f"s3://{BUCKET}/store/branch_states/tune")
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "step": 12, "rng": torch.get_rng_state()}
    store.put("tree", 12, state)
    assert keys(server[1], "store/") == ["store/branch_states/tune/tree/000000012.pt"]
    assert store.has("tree", 12) and not store.has("tree", 20)
    got = store.get("tree", 12)
    assert torch.equal(got["model"]["w"], state["model"]["w"]) and got["step"] == 12
    store.discard("tree", 12)
    assert not store.has("tree", 12) and not [k for k in keys(server[1], "store/") if k.endswith(".pt")]
    buf = io.BytesIO()
    torch.save({"code": pd.Timestamp(0)}, buf)  # an arbitrary object: loading it would run its code
    store.write(store.path("tree", "000000020.pt"), buf.getvalue())
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        store.get("tree", 20)


def test_the_resume_check_reads_the_experiment_state_in_the_bucket(aws_env, server):
    client = server[1]
    assert unreadable_state(f"s3://{BUCKET}/check/tune") is None  # nothing there: a segment that never started
    client.put_object(Bucket=BUCKET, Key="check/tune/experiment_state-2026-12-01_00-00-00.json", Body=b'{"a": 1}')
    assert unreadable_state(f"s3://{BUCKET}/check/tune") is None
    client.put_object(Bucket=BUCKET, Key="check/tune/experiment_state-2026-12-01_00-00-09.json", Body=b'{"a": ')
    why = unreadable_state(f"s3://{BUCKET}/check/tune")
    assert why.startswith(f"s3://{BUCKET}/check/tune/experiment_state-2026-12-01_00-00-09.json is unreadable "
                          "(JSONDecodeError"), why


# --------------------------------------------------------------------------- studies through the CLI
@pytest.mark.ray
@pytest.mark.slow
def test_a_study_on_s3_writes_its_checkpoints_to_the_bucket_and_records_what_local_storage_records(runs, server):
    local, remote = runs
    assert_same_tables(remote, local)
    objects = keys(server[1], "undisturbed/branching/")
    written = ever_written(server[1], "undisturbed/branching/")
    trials = load(remote, "branching").trials
    for tid in trials.trial_id:  # every trial's Tune checkpoints were objects (Tune names its dirs by trial id),
        assert any(f"/tune/{tid}/checkpoint_" in k and k.endswith("/trial.pt") for k in written), (tid, written)
        # deleted once the record held the trial as completed (eeray/raytune/callback.py)
        assert not any(f"/tune/{tid}/checkpoint_" in k for k in objects), (tid, objects)
    assert any("/tune/experiment_state-" in k for k in objects)  # what --resume restores
    assert not (remote / "branching" / "_tune").exists()  # nothing of Tune's storage on the local disk
    assert not [k for k in objects if k.endswith(".pt") and "/branch_states/" in k]  # used, then deleted
    assert not [k for k in keys(server[1], "") if s3.PROBE_PREFIX in k]  # the pre-flight's object is gone
    t = trials.set_index("trial_name")
    for name, step in TREE.items():  # the branches started from their trunk's state in the bucket
        assert (t.loc[name, "branch_step"] == step) if step else pd.isna(t.loc[name, "branch_step"]), name


def _popen(results_dir, *args, env):
    cmd = [sys.executable, str(ROOT / STUDY), "--smoke", "--results-dir", str(results_dir), *args]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env}, start_new_session=True)


@pytest.mark.ray
@pytest.mark.slow
def test_a_driver_killed_mid_study_resumes_from_s3_with_every_row_once(runs, server, tmp_path):
    env, client = server
    storage = f"s3://{BUCKET}/killed"
    # one trial at a time: the trunk, the Standard baseline, then a branch — killed once that branch's row is
    # written, the trunk's states for the two branches still waiting in the bucket
    proc = _popen(tmp_path, "--storage", storage, "--max-concurrent", "1", env={**env, "EERAY_KILL_AT": "trial_row:3"})
    reap_killed(proc)
    done = load(tmp_path, "branching").trials
    assert len(done) == 3 and TRUNK in set(done.trial_name)
    states = [k for k in keys(client, "killed/") if "/branch_states/tune/" in k and k.endswith(".pt")]
    assert states, "the branch-point states the waiting branches need, in the bucket"
    trunk = done.set_index("trial_name").loc[TRUNK, "trial_id"]
    trunk_rows = rows_of(tmp_path, "branching", trunk)
    out = run_study(STUDY, tmp_path, "--smoke", "--storage", storage, "--max-concurrent", "1", "--resume", env=env,
                    own_ray=True)
    assert "5 trials (5 completed, 0 failed)" in out.stdout
    assert same_rows(rows_of(tmp_path, "branching", trunk), trunk_rows)  # the trunk was not run again
    res = load(tmp_path, "branching")
    assert not res.steps.duplicated(["trial_id", "step", "phase"]).any()
    assert not res.trials.trial_name.duplicated().any()
    assert_same_tables(tmp_path, runs[0])  # every row once, equal to the undisturbed run's
    assert not [k for k in keys(client, "killed/") if "/branch_states/" in k and k.endswith(".pt")]


# --------------------------------------------------------------------------- refusals before anything runs
def assert_refused(results_dir, storage: str, env: dict, *words: str) -> str:
    """The CLI exits 2 with one line on stderr, ``error: ...`` naming the storage, and leaves no execution and no
    trial row behind; returns that line."""
    t0 = time.monotonic()
    out = run_study(STUDY, results_dir, "--smoke", "--storage", storage, env=env, expect=2, timeout=120)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --storage {storage}: "), out.stderr
    assert all(w in lines[0] for w in words), (words, lines[0])
    assert time.monotonic() - t0 < 60  # no minutes of retries
    assert not (results_dir / "branching" / "execution.json").exists()
    assert load(results_dir, "branching").trials.empty
    assert not (results_dir / "mlflow.db").exists()
    print(lines[0])  # quoted in the report: pytest -s shows it
    return lines[0]


def test_a_missing_bucket_is_refused_before_anything_runs(server, tmp_path):
    env, _ = server
    assert_refused(tmp_path, "s3://no-such-bucket/studies", env, "the bucket 'no-such-bucket' does not exist at "
                   f"{env['AWS_ENDPOINT_URL']} (AWS_ENDPOINT_URL)", "aws s3 mb s3://no-such-bucket")


def test_refused_credentials_are_refused_before_anything_runs(server, tmp_path):
    env, _ = server
    moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = 0  # the server checks keys from now on: this one is unknown
    try:
        assert_refused(tmp_path, f"s3://{BUCKET}/studies", {**env, "AWS_ACCESS_KEY_ID": "AKIAEERAYUNKNOWN"},
                       "refused this driver's credentials", "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    finally:
        moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = float("inf")


def test_an_unreachable_endpoint_is_refused_before_anything_runs(server, tmp_path):
    env, _ = server
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    assert_refused(tmp_path, f"s3://{BUCKET}/studies", {**env, "AWS_ENDPOINT_URL": closed},
                   f"cannot reach {closed} (AWS_ENDPOINT_URL)")
