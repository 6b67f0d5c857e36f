"""Which Ray a study runs on, decided before Ray starts (eeray.cli.choose_ray), and whether a cluster can ever run
a trial (eeray.raytune.capacity.judge), on given nodes and node types. The runs themselves are in
tests/test_rehearsal.py (each address source against a real cluster with Ray's autoscaler)."""
import pytest

from eeray.cli import choose_ray
from eeray.config import ConfigError
from eeray.raytune.capacity import ClusterError, NodeShape, judge


@pytest.mark.parametrize("flag, env, address, source", [
    ("10.0.0.5:6379", {}, "10.0.0.5:6379", "--address"),
    ("10.0.0.5:6379", {"RAY_ADDRESS": "10.0.0.9:6379"}, "10.0.0.5:6379", "--address"),
    (None, {"RAY_ADDRESS": "10.0.0.9:6379"}, "10.0.0.9:6379", "RAY_ADDRESS"),
    (None, {"RAY_ADDRESS": "auto"}, "auto", "RAY_ADDRESS"),
    (None, {}, "local", "default"),
    (None, {"RAY_ADDRESS": "  "}, "local", "default"),
    ("local", {"RAY_ADDRESS": "10.0.0.9:6379"}, "local", "--address"),
])
def test_an_explicit_address_is_joined_and_none_means_a_ray_of_its_own(flag, env, address, source):
    choice = choose_ray(flag, env)
    assert (choice.address, choice.source) == (address, source)
    assert choice.local == (address == "local")
    assert (source == "RAY_ADDRESS") == ("ray job submit" in choice.why)


@pytest.mark.parametrize("flag, env, field, wrong", [
    (None, {"RAY_ADDRESS": "http://127.0.0.1:8265"}, "RAY_ADDRESS", "dashboard address"),
    ("https://head:8265", {}, "--address", "dashboard address"),
    (None, {"RAY_ADDRESS": "ray://head:10001"}, "RAY_ADDRESS", "Ray Client"),
    ("head", {}, "--address", "host:port"),
    ("head:port", {}, "--address", "host:port"),
])
def test_an_address_that_cannot_be_a_gcs_is_refused_naming_where_it_came_from(flag, env, field, wrong):
    with pytest.raises(ConfigError) as refused:
        choose_ray(flag, env)
    assert refused.value.field == field and wrong in str(refused.value)


PROBE = """
import sys
from eeray.cli import main
def build(profile):
    raise AssertionError("the study must not even be built")
rc = main(build, ["--smoke"])
print(rc, "ray" in sys.modules)
"""


def test_a_dashboard_address_in_the_environment_is_refused_before_ray_starts():
    import os
    import subprocess
    import sys

    env = {**os.environ, "RAY_ADDRESS": "http://127.0.0.1:8265"}  # exported for `ray job submit`
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["2", "False"], (out.stdout, out.stderr)  # refused, and Ray never imported
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: config field 'RAY_ADDRESS' = 'http://127.0.0.1:8265'"), err
    assert "dashboard address" in err[0] and "host:port" in err[0]


# --------------------------------------------------------------------------- capacity
HEAD = NodeShape("node 10.0.0.5", {"CPU": 0.0, "memory": 1e9}, 0)
GPU_TYPES = [NodeShape("gpu_worker", {"CPU": 8.0, "GPU": 1.0}, 2), NodeShape("gpu_worker_spot", {"CPU": 8.0, "GPU": 1.0}, 6)]
SOURCE = "the autoscaler's config /home/ray/ray_bootstrap_config.yaml"


def test_a_bundle_that_fits_an_alive_node_needs_nothing():
    worker = NodeShape("node 10.0.0.6", {"CPU": 8.0, "GPU": 1.0}, 0)
    assert judge([{"CPU": 1, "GPU": 0.25}], [HEAD, worker], GPU_TYPES, SOURCE) is None


def test_a_bundle_that_fits_only_a_type_not_launched_yet_waits_for_the_autoscaler():
    note = judge([{"CPU": 1, "GPU": 0.25}, {"CPU": 1}], [HEAD], GPU_TYPES, SOURCE)
    assert note.startswith("waiting for the autoscaler: {'CPU': 1, 'GPU': 0.25} fits no node yet; the autoscaler "
                           "may launch gpu_worker, gpu_worker_spot")
    assert "{'CPU': 1} fits no node yet" in note


def test_a_bundle_no_node_and_no_type_can_hold_is_refused_with_the_types_listed():
    with pytest.raises(ClusterError) as refused:
        judge([{"CPU": 1, "GPU": 2}], [HEAD], GPU_TYPES, SOURCE)
    text = str(refused.value)
    assert "no node of this cluster can ever hold the bundle {'CPU': 1, 'GPU': 2}" in text
    assert "Nodes now: node 10.0.0.5 {CPU 0, GPU 0}" in text
    assert f"({SOURCE}): gpu_worker {{CPU 8, GPU 1}} ×2; gpu_worker_spot {{CPU 8, GPU 1}} ×6" in text


def test_without_an_autoscaler_the_nodes_now_are_all_there_is():
    with pytest.raises(ClusterError) as refused:
        judge([{"CPU": 1, "GPU": 1}], [HEAD, NodeShape("node 10.0.0.6", {"CPU": 4.0}, 0)], [], "")
    assert "No autoscaler was found, so these nodes are all it will have" in str(refused.value)
    assert judge([{"CPU": 1}], [HEAD, NodeShape("node 10.0.0.6", {"CPU": 4.0}, 0)], [], "") is None
