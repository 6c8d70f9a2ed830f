"""The node's teardown leaves the machine as it found it, and a second cluster starts on it afterwards.

Runs before tests/e2e/test_workloads.py (whose session cluster uses the same bridge name), with two clusters of
its own in turn, each running a pod before it is torn down."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from harness import SHARED, timed


def _run_a_pod(cp, node) -> None:
    from kubernetes import client

    from node import PAUSE_IMAGE

    core = client.CoreV1Api(cp.api_client())
    core.create_namespaced_pod("default", {"metadata": {"name": "probe"}, "spec": {
        "containers": [{"name": "pause", "image": PAUSE_IMAGE, "imagePullPolicy": "Never"}]}})
    node._wait("pod probe Running", lambda: core.read_namespaced_pod("probe", "default").status.phase == "Running",
               timeout=120)


@pytest.mark.timeout(900)
def test_teardown_leaves_nothing_and_a_second_cluster_starts():
    from controlplane import BINARIES, ControlPlane, Unavailable, find_binaries
    from node import NODE_BINARIES, Node, check_host, host_state, pick_subnet

    try:
        check_host()
    except Unavailable as exc:
        pytest.fail(f"make e2e cannot run here: {exc}")
    before = host_state()
    # A short root: containerd's ttrpc socket path must stay under 104 bytes (pytest's tmp_path is too long).
    tmp_path = Path(tempfile.mkdtemp(prefix="e2e-", dir="/tmp"))
    bindir = find_binaries(SHARED / "k8s" / "bin", tmp_path / "bin", BINARIES + NODE_BINARIES)
    for attempt in (1, 2):
        root = tmp_path / f"cluster-{attempt}"
        (root / "cp").mkdir(parents=True)
        (root / "node").mkdir()
        subnet = pick_subnet()
        cp = ControlPlane(bindir, root / "cp", address=str(subnet[1]))
        node = Node(cp, bindir, root / "node", subnet)
        try:
            with timed(f"teardown test: cluster {attempt} up, a pod Running"):
                node.make_bridge()
                cp.start()
                node.start()
                _run_a_pod(cp, node)
            during = host_state()
            assert during["processes"] and during["links"] and during["iptables"], (
                f"cluster {attempt} runs, yet host_state() sees none of it: {json.dumps(during)}")
        finally:
            with timed(f"teardown test: cluster {attempt} down"):
                node.stop()
                cp.stop()
        left = {k: sorted(set(v) - set(before[k])) for k, v in host_state().items()}
        assert not any(left.values()), f"cluster {attempt} left on the machine: {json.dumps(left, indent=1)}"
    shutil.rmtree(tmp_path, ignore_errors=True)
