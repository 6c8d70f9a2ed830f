"""Send a run's objects to the API server with the `kubernetes` client, and follow, inspect or cancel a run.

Everything is checked before the first call: the objects are rendered and validated (the PyTorchJob CRD schema
is read from the cluster unless given), and a run name that already exists is refused unless ``replace``.
"""

from __future__ import annotations

import logging
import time

from ..io import UserError
from .render import RUN_LABEL, Run, render_objects
from .validate import validate_objects

logger = logging.getLogger(__name__)

PYTORCHJOB = ("kubeflow.org", "v1", "pytorchjobs")


class Cluster:
    """The API calls of the submitter, in one namespace, from the user's kubeconfig (or in-cluster config)."""

    def __init__(self, namespace: str, context: str | None = None):
        from kubernetes import client, config

        import os

        try:
            # The client reads $KUBECONFIG once, when it is imported; read it now (':'-separated lists merge).
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG"), context=context)
        except Exception as kube_exc:  # noqa: BLE001 - no kubeconfig: try the in-cluster service account
            try:
                config.load_incluster_config()
            except config.ConfigException:
                raise UserError(f"no Kubernetes cluster configured: {kube_exc}") from None
        self.namespace = namespace
        self.core = client.CoreV1Api()
        self.batch = client.BatchV1Api()
        self.custom = client.CustomObjectsApi()
        self.extensions = client.ApiextensionsV1Api()
        self.ApiException = client.exceptions.ApiException

    # -- reading -------------------------------------------------------------------------------------------

    def pytorchjob_schema(self) -> dict:
        """The served PyTorchJob schema of this cluster's training operator."""
        import json

        try:
            # The raw document: the schema is JSON Schema, not something to pass through the client's models.
            response = self.extensions.read_custom_resource_definition("pytorchjobs.kubeflow.org",
                                                                       _preload_content=False)
        except self.ApiException as exc:
            raise UserError(f"cannot read the PyTorchJob CRD from the cluster ({exc.status} {exc.reason}); "
                            "is the Kubeflow training operator installed? (or pass --crd FILE)") from None
        crd = json.loads(response.data)
        [version] = [v for v in crd["spec"]["versions"] if v.get("served")]
        return version["schema"]["openAPIV3Schema"]

    def run_objects(self, name: str) -> list[tuple[str, str]]:
        """(kind, name) of the run's Jobs, PyTorchJobs and ConfigMaps."""
        selector = f"{RUN_LABEL}={name}"
        found = [("Job", j.metadata.name) for j in
                 self.batch.list_namespaced_job(self.namespace, label_selector=selector).items]
        found += [("ConfigMap", c.metadata.name) for c in
                  self.core.list_namespaced_config_map(self.namespace, label_selector=selector).items]
        try:
            jobs = self.custom.list_namespaced_custom_object(*PYTORCHJOB[:2], self.namespace, PYTORCHJOB[2],
                                                             label_selector=selector)
            found += [("PyTorchJob", j["metadata"]["name"]) for j in jobs.get("items", [])]
        except self.ApiException as exc:
            if exc.status != 404:  # 404: no training operator on this cluster
                raise
        return found

    def pods(self, name: str) -> list:
        return self.core.list_namespaced_pod(self.namespace, label_selector=f"{RUN_LABEL}={name}").items

    # -- writing -------------------------------------------------------------------------------------------

    def create(self, obj: dict) -> None:
        kind = obj["kind"]
        if kind == "ConfigMap":
            self.core.create_namespaced_config_map(self.namespace, obj)
        elif kind == "Job":
            self.batch.create_namespaced_job(self.namespace, obj)
        elif kind == "PyTorchJob":
            self.custom.create_namespaced_custom_object(*PYTORCHJOB[:2], self.namespace, PYTORCHJOB[2], obj)
        else:
            raise ValueError(f"cannot create a {kind}")

    def delete(self, kind: str, name: str) -> None:
        from kubernetes import client

        options = client.V1DeleteOptions(propagation_policy="Foreground")
        try:
            if kind == "ConfigMap":
                self.core.delete_namespaced_config_map(name, self.namespace)
            elif kind == "Job":
                self.batch.delete_namespaced_job(name, self.namespace, body=options)
            elif kind == "PyTorchJob":
                self.custom.delete_namespaced_custom_object(*PYTORCHJOB[:2], self.namespace, PYTORCHJOB[2], name,
                                                            body=options)
        except self.ApiException as exc:
            if exc.status != 404:
                raise


def submit(run: Run, cluster: Cluster, replace: bool = False, pytorchjob_schema: dict | None = None) -> list[str]:
    """Validate, refuse an existing run unless ``replace``, create the objects; returns 'Kind/name' created."""
    objects = render_objects(run)
    if pytorchjob_schema is None and any(o["kind"] == "PyTorchJob" for o in objects):
        pytorchjob_schema = cluster.pytorchjob_schema()
    problems = validate_objects(objects, run.settings.kubernetes_version, pytorchjob_schema)
    if problems:
        raise UserError("the rendered objects do not validate:\n  " + "\n  ".join(problems))
    existing = cluster.run_objects(run.name)
    if existing:
        if not replace:
            names = ", ".join(f"{k}/{n}" for k, n in existing)
            raise UserError(f"run '{run.name}' already exists in namespace {cluster.namespace} ({names}); "
                            "pass --replace to delete and recreate it, or --name to pick another name")
        cancel(run.name, cluster, wait=True)
    created = []
    for obj in objects:
        cluster.create(obj)
        created.append(f"{obj['kind']}/{obj['metadata']['name']}")
        logger.info("created %s", created[-1])
    return created


def cancel(name: str, cluster: Cluster, wait: bool = False, timeout: float = 120.0) -> list[str]:
    """Delete the run's objects (their pods go with them); with ``wait``, until they are gone."""
    existing = cluster.run_objects(name)
    for kind, obj_name in existing:
        cluster.delete(kind, obj_name)
    deadline = time.monotonic() + timeout
    while wait and cluster.run_objects(name):
        if time.monotonic() > deadline:
            raise UserError(f"run '{name}': objects still present {timeout:.0f}s after deletion")
        time.sleep(2)
    return [f"{k}/{n}" for k, n in existing]


def status(name: str, cluster: Cluster) -> dict:
    """The run's objects and its pods' phases."""
    objects = cluster.run_objects(name)
    if not objects:
        raise UserError(f"no run '{name}' in namespace {cluster.namespace}")
    pods = cluster.pods(name)
    return {
        "run": name,
        "objects": [f"{k}/{n}" for k, n in objects],
        "pods": {p.metadata.name: p.status.phase for p in pods},
    }


def logs(name: str, cluster: Cluster, follow: bool = False, container: str | None = None, out=None) -> None:
    """Print the logs of the run's pods (their first container unless ``container``); ``follow`` streams one."""
    import sys

    out = out or sys.stdout
    pods = sorted(cluster.pods(name), key=lambda p: p.metadata.name)
    if not pods:
        raise UserError(f"run '{name}' has no pods yet in namespace {cluster.namespace}")
    targets = pods[:1] if follow else pods
    for pod in targets:
        cname = container or pod.spec.containers[0].name
        if len(targets) > 1:
            print(f"==> {pod.metadata.name} ({cname}) <==", file=out)
        if follow:
            stream = cluster.core.read_namespaced_pod_log(pod.metadata.name, cluster.namespace, container=cname,
                                                          follow=True, _preload_content=False)
            for chunk in stream.stream():
                out.write(chunk.decode(errors="replace"))
        else:
            out.write(cluster.core.read_namespaced_pod_log(pod.metadata.name, cluster.namespace, container=cname))
