"""What the e2e tests call on their cluster: the CLI, kubectl, waits on conditions, timings (conftest.py starts it)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
SETTINGS = REPO / "configs" / "cluster" / "cpu-node.yaml"
NAMESPACE = "rlvsdistill"
BUILDAH = ("buildah", "--storage-driver", "vfs")
CLI = (sys.executable, "-m", "rlvsdistill")  # as `make submit-*` runs it, from this checkout
TIMINGS: list[tuple[str, float]] = []


def default_image() -> str:
    """The image `make image-test` tags for this checkout's commit (IMAGE_TEST_KEEP=1 keeps it)."""
    repo = yaml.safe_load(SETTINGS.read_text())["image_repository"]
    sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.strip()
    return f"{repo}:{sha}"


def timed(what: str):
    """Context manager: record how long ``what`` took, for the summary at the end."""

    class _Timer:
        def __enter__(self):
            self.t0 = time.monotonic()
            print(f"e2e: {what} ...", flush=True)

        def __exit__(self, *exc):
            took = time.monotonic() - self.t0
            TIMINGS.append((what + ("" if exc[0] is None else " (failed)"), took))
            print(f"e2e: {what}: {took:.0f} s", flush=True)

    return _Timer()


@dataclass
class E2ECluster:
    """The running cluster, with the calls the tests make against it."""

    cp: object
    node: object
    root: Path
    volume: Path  # the data PV's directory on this machine (its /data in the pods)
    image: str
    env: dict = field(default_factory=dict)

    def kubectl(self, *args: str, check: bool = True, timeout: float = 300,
                input: str | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(self.node.bin / "kubectl"), *args], capture_output=True, text=True,
                              env=self.env, timeout=timeout, input=input)
        if check and proc.returncode:
            raise AssertionError(f"kubectl {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
        return proc

    def rlvsdistill(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        """The CLI, as `make submit-*` runs it, against this cluster's kubeconfig."""
        proc = subprocess.run([*CLI, *args], capture_output=True, text=True, env=self.env, timeout=timeout, cwd=REPO)
        if check and proc.returncode:
            raise AssertionError(f"rlvsdistill {' '.join(args)} exited {proc.returncode}:\n"
                                 f"{proc.stdout}{proc.stderr}")
        return proc

    def cli(self, command: str, run: str) -> subprocess.CompletedProcess:
        """`rlvsdistill status|cancel RUN` on cpu-node.yaml's namespace."""
        return self.rlvsdistill(command, run, "--cluster", str(SETTINGS))

    def submit(self, kind: str, config: str | None, name: str, *overrides: str) -> subprocess.CompletedProcess:
        """`rlvsdistill submit KIND` with the image under test (imagePullPolicy: Never) on cpu-node.yaml."""
        args = ["submit", kind, "--image", self.image, "--local-image", "--cluster", str(SETTINGS), "--name", name]
        if config:
            args += ["--config", config]
        return self.rlvsdistill(*args, *overrides)

    def core(self):
        from kubernetes import client

        return client.CoreV1Api(self.cp.api_client())

    def batch(self):
        from kubernetes import client

        return client.BatchV1Api(self.cp.api_client())

    def wait_job(self, name: str, condition: str = "Complete", timeout: float = 900) -> dict:
        """Wait until Job ``name`` has ``condition`` (Complete or Failed) True; fail with the pods' logs and the
        events if it ends the other way or the time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.batch().read_namespaced_job(name, NAMESPACE)
            conds = {c.type: c for c in job.status.conditions or [] if c.status == "True"}
            if condition in conds:
                return job
            other = {"Complete": "Failed", "Failed": "Complete"}[condition]
            if other in conds or time.monotonic() > deadline:
                why = f"{other}: {conds[other].message}" if other in conds else f"not {condition} after {timeout:.0f}s"
                raise AssertionError(f"Job {name}: {why}\n{self.describe(name)}")
            time.sleep(1)

    def follow(self, run: str) -> subprocess.Popen:
        """`rlvsdistill logs RUN -f` in the background (stdout and stderr as text pipes)."""
        return subprocess.Popen([*CLI, "logs", run, "-f", "--cluster", str(SETTINGS)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=self.env, cwd=REPO)

    def wait_for(self, predicate, what: str, timeout: float = 600):
        """Poll until ``predicate()`` returns something true (an API object's state, a file on the volume)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = predicate()
            if got:
                return got
            time.sleep(0.5)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{self.events()}")

    def wait_pod(self, predicate, what: str, timeout: float = 600):
        """Poll the namespace's pods until ``predicate(pods)`` returns something true; return it."""
        return self.wait_for(lambda: predicate(self.core().list_namespaced_pod(NAMESPACE).items), what, timeout)

    def run_pods(self, run: str, phase: str | None = None) -> list:
        """The pods of run ``run`` (label rlvsdistill.io/run), oldest first; only those in ``phase`` if given."""
        pods = self.core().list_namespaced_pod(NAMESPACE, label_selector=f"rlvsdistill.io/run={run}").items
        return sorted((p for p in pods if phase in (None, p.status.phase)), key=lambda p: p.metadata.creation_timestamp)

    def events(self) -> str:
        return self.kubectl("-n", NAMESPACE, "get", "events", "--sort-by=.lastTimestamp", check=False).stdout

    def describe(self, run: str) -> str:
        """The run's pods, the last lines of each container's log, and the namespace's events."""
        out = [self.kubectl("-n", NAMESPACE, "get", "pods,jobs", "-o", "wide", check=False).stdout]
        for pod in self.run_pods(run):
            for c in pod.spec.containers:
                log = self.kubectl("-n", NAMESPACE, "logs", pod.metadata.name, "-c", c.name, "--tail=30",
                                   check=False)
                out.append(f"--- {pod.metadata.name}/{c.name}:\n{log.stdout}{log.stderr}")
        return "\n".join(out + [self.events()])


def buildah_image_exists(ref: str) -> bool:
    return shutil.which("buildah") is not None and subprocess.run(
        [*BUILDAH, "inspect", "--type", "image", ref], capture_output=True).returncode == 0


def setup_objects(c: E2ECluster, volume: Path) -> None:
    """Namespace (restricted), RBAC, the default StorageClass, a root-owned local PV and the README's claim."""
    c.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE, "labels": {
            "pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/warn": "restricted"}}},
        {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {
            "name": "e2e-local", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
         "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "Immediate"},
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "e2e-data"}, "spec": {
            "capacity": {"storage": "2Ti"}, "accessModes": ["ReadWriteMany"], "storageClassName": "e2e-local",
            "persistentVolumeReclaimPolicy": "Retain", "local": {"path": str(volume)},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [{
                "key": "kubernetes.io/hostname", "operator": "In", "values": [c.node.name]}]}]}}}}]))
    # The ServiceAccount admission controller refuses pods until the namespace's default account exists.
    c.wait_for(lambda: c.kubectl("-n", NAMESPACE, "get", "serviceaccount", "default", check=False).returncode == 0,
               "the namespace's default ServiceAccount", 60)
    c.kubectl("apply", "-f", str(REPO / "k8s" / "rbac.yaml"))
    c.kubectl("apply", "-f", str(REPO / "k8s" / "pvc.yaml"))
    c.kubectl("-n", NAMESPACE, "wait", "--for=jsonpath={.status.phase}=Bound", "pvc/rlvsdistill-data",
              "--timeout=120s")


@contextlib.contextmanager
def bare_cluster(what: str = "cluster"):
    """Start a control plane and a node under a fresh short root in /tmp; yield ``(root, cp, node)``. On the way
    out, stop both, remove the root, and fail if anything of them is left on the machine (``node.host_state``)."""
    from controlplane import BINARIES, ControlPlane, find_binaries
    from node import BRIDGE, NODE_BINARIES, Node, host_state, pick_subnet

    before = host_state()
    # Short: containerd's ttrpc socket path under it must stay within 104 bytes (pytest's tmp_path is too long).
    root = Path(tempfile.mkdtemp(prefix="e2e-", dir="/tmp"))
    try:
        bindir = find_binaries(SHARED / "k8s" / "bin", root / "bin", BINARIES + NODE_BINARIES)
        subnet = pick_subnet()
        (root / "cp").mkdir()
        (root / "node").mkdir()
        cp = ControlPlane(bindir, root / "cp", address=str(subnet[1]))
        node = Node(cp, bindir, root / "node", subnet)
        try:
            node.make_bridge()
            with timed(f"{what}: control plane + node start"):
                cp.start()
                node.start()
            yield root, cp, node
        finally:
            with timed(f"{what}: teardown"):
                node.stop()
                cp.stop()
                subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)  # if stop() could not
    finally:
        shutil.rmtree(root, ignore_errors=True)
    left = {k: sorted(set(v) - set(before[k])) for k, v in host_state().items()}
    assert not any(left.values()), f"{what} left these on the machine: {json.dumps(left, indent=1)}"


@contextlib.contextmanager
def running_cluster(model: Path, image: str):
    """A ``bare_cluster`` with the PyTorchJob CRD, ``image`` imported from buildah's storage, ``model`` and
    MATH-500 on the data volume, and the namespace's objects; yield the E2ECluster."""
    with bare_cluster("e2e cluster") as (root, cp, node):
        volume = root / "volume"
        volume.mkdir(mode=0o755)  # owned by root, as a fresh volume is: fsGroup must make it writable
        cp.install_crd(SHARED / "k8s" / "crds" / "kubeflow.org_pytorchjobs.yaml")
        archive = root / "image.tar"
        with timed(f"image export (buildah push docker-archive, {image})"):
            subprocess.run([*BUILDAH, "push", "--quiet", image, f"docker-archive:{archive}:{image}"], check=True,
                           capture_output=True)
        TIMINGS.append((f"image archive size {archive.stat().st_size / 2**30:.2f} GiB", 0.0))
        with timed("image import (ctr -n k8s.io images import)"):
            node.import_image(archive)
        archive.unlink()
        shutil.copytree(model, volume / "models" / "tiny")
        shutil.copy(SHARED / "data" / "math500" / "test.jsonl", volume / "math500.jsonl")
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
        env.update(KUBECONFIG=str(cp.kubeconfig), PYTHONUNBUFFERED="1")
        cluster = E2ECluster(cp, node, root, volume, image, env)
        setup_objects(cluster, volume)
        yield cluster
