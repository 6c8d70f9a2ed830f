"""The node's teardown leaves the machine as it found it, and a second cluster starts on it afterwards.

Runs before tests/e2e/test_workloads.py (whose session cluster uses the same bridge name), with two clusters of
its own in turn (``harness.bare_cluster``, which fails if anything of one is left), each running a pod."""

from __future__ import annotations

import json

import pytest

from harness import bare_cluster, timed


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
    from controlplane import Unavailable
    from node import check_host, host_state

    try:
        check_host()
    except Unavailable as exc:
        pytest.fail(f"make e2e cannot run here: {exc}")
    for attempt in (1, 2):
        with bare_cluster(f"teardown test: cluster {attempt}") as (_, cp, node):
            with timed(f"teardown test: cluster {attempt}: a pod Running"):
                _run_a_pod(cp, node)
            during = host_state()
            assert during["processes"] and during["links"] and during["iptables"], (
                f"cluster {attempt} runs, yet host_state() sees none of it: {json.dumps(during)}")
