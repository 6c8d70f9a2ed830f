"""`make e2e`: a one-node Kubernetes that runs pods (tests/controlplane.py + tests/node.py), the image that
`make image-test` built imported into its containerd, and the project's runs submitted through `rlvsdistill submit`.

Collected only when asked for (`pytest tests/e2e`, as `make e2e` does): it needs root, containerd, runc, the CNI
plugins and the built image, and takes minutes. What it sets up, as on a real cluster:
- the namespace ``rlvsdistill`` enforcing Pod Security "restricted", ``k8s/rbac.yaml``, and ``k8s/pvc.yaml``'s
  claim bound to a ``local`` PV (the default StorageClass) whose root is owned by root: the kubelet's fsGroup
  handling is what makes it writable for uid 1000, as the README says;
- the tiny model and MATH-500 on that volume (``/data/models/tiny``, ``/data/math500.jsonl``);
- the image: ``$E2E_IMAGE``, by default ``localhost/rlvsdistill-image-test:<HEAD>`` (what
  ``IMAGE_TEST_KEEP=1 make image-test`` leaves), exported from buildah as a docker-archive and imported into
  containerd's ``k8s.io`` namespace. A missing image fails the session: no other image is swapped in.

Every workload's wall time, and the export and import's, are printed at the end. Teardown removes everything and
fails if anything of the cluster is left on the machine (``node.host_state``).
"""

from __future__ import annotations

import os

import pytest

from harness import TIMINGS, buildah_image_exists, default_image, running_cluster


@pytest.fixture(scope="session")
def e2e(tiny_model):
    """The running one-node cluster with the image imported and the data on its volume (see the module's text)."""
    from controlplane import Unavailable
    from node import check_host

    image = os.environ.get("E2E_IMAGE") or default_image()
    try:
        check_host()
    except Unavailable as exc:
        pytest.fail(f"make e2e cannot run here: {exc}")
    if not buildah_image_exists(image):
        pytest.fail(f"no image {image} in buildah's storage: build it with `IMAGE_TEST_KEEP=1 make image-test` "
                    "(or name a built one with E2E_IMAGE=REF)")
    with running_cluster(tiny_model, image) as cluster:
        yield cluster


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.section("e2e wall times")
        for what, took in TIMINGS:
            terminalreporter.write_line(f"{took:7.0f} s  {what}" if took else f"          {what}")
