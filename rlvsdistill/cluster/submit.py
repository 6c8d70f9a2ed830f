"""Send a run's objects to the API server with the `kubernetes` client, and follow, inspect or cancel a run.

Everything is checked before the first call: the objects are rendered and validated (the PyTorchJob CRD schema
is read from the cluster unless given), the GPUs a pod asks for are compared with the nodes' (when the user may
list nodes), and a run name that already exists is refused unless ``replace``. Objects are created with strict
field validation; if one create fails, the ones before it are deleted. The ConfigMap is then owned by the run's
workloads, so it goes with them.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

from ..io import UserError
from .render import RUN_LABEL, Run, render_objects
from .validate import validate_objects

logger = logging.getLogger(__name__)

PYTORCHJOB = ("kubeflow.org", "v1", "pytorchjobs")
WORKLOADS = ("Job", "PyTorchJob")


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
        self.networking = client.NetworkingV1Api()
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
        found += [("NetworkPolicy", p.metadata.name) for p in
                  self.networking.list_namespaced_network_policy(self.namespace, label_selector=selector).items]
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

    def unfinished(self, name: str) -> bool:
        """Whether a Job or PyTorchJob of the run has not yet ended (no Complete/Succeeded/Failed condition)."""
        selector, ended = f"{RUN_LABEL}={name}", {"Complete", "Succeeded", "Failed"}

        def running(conditions) -> bool:
            return not any(c["type"] in ended and c["status"] == "True" for c in conditions or [])

        jobs = self.batch.list_namespaced_job(self.namespace, label_selector=selector).items
        if any(running([{"type": c.type, "status": c.status} for c in (j.status.conditions or [])]) for j in jobs):
            return True
        try:
            pytorchjobs = self.custom.list_namespaced_custom_object(*PYTORCHJOB[:2], self.namespace, PYTORCHJOB[2],
                                                                    label_selector=selector).get("items", [])
        except self.ApiException as exc:
            if exc.status != 404:
                raise
            pytorchjobs = []
        return any(running(j.get("status", {}).get("conditions")) for j in pytorchjobs)

    def pods(self, name: str) -> list:
        return self.core.list_namespaced_pod(self.namespace, label_selector=f"{RUN_LABEL}={name}").items

    def node_allocatable(self) -> list[dict[str, str]] | None:
        """Allocatable resources of every schedulable node; None when the user may not list nodes."""
        try:
            nodes = self.core.list_node().items
        except self.ApiException as exc:
            if exc.status in (401, 403):
                return None
            raise
        return [dict(n.status.allocatable or {}) for n in nodes if not n.spec.unschedulable]

    def missing(self, kind: str, name: str) -> bool | None:
        """Whether a PersistentVolumeClaim or ServiceAccount is absent; None when the user may not read it."""
        read = {"PersistentVolumeClaim": self.core.read_namespaced_persistent_volume_claim,
                "ServiceAccount": self.core.read_namespaced_service_account}[kind]
        try:
            read(name, self.namespace)
            return False
        except self.ApiException as exc:
            if exc.status == 404:
                return True
            if exc.status in (401, 403):
                return None
            raise

    def claim(self, name: str):
        """The PersistentVolumeClaim ``name`` (None when absent or not readable)."""
        try:
            return self.core.read_namespaced_persistent_volume_claim(name, self.namespace)
        except self.ApiException as exc:
            if exc.status in (401, 403, 404):
                return None
            raise

    # -- writing -------------------------------------------------------------------------------------------

    def create(self, obj: dict, dry_run: bool = False) -> dict:
        """Create ``obj`` with strict field validation (an unknown or duplicated field is an error, not a
        warning); ``dry_run``: the server admits and validates it, stores nothing. Returns the created object."""
        kind, ns = obj["kind"], self.namespace
        opts = {"field_validation": "Strict", **({"dry_run": "All"} if dry_run else {})}
        if kind == "ConfigMap":
            return self.core.create_namespaced_config_map(ns, obj, **opts).to_dict()
        if kind == "NetworkPolicy":
            return self.networking.create_namespaced_network_policy(ns, obj, **opts).to_dict()
        if kind == "Job":
            return self.batch.create_namespaced_job(ns, obj, **opts).to_dict()
        if kind == "PyTorchJob":
            return self.custom.create_namespaced_custom_object(*PYTORCHJOB[:2], ns, PYTORCHJOB[2], obj, **opts)
        raise ValueError(f"cannot create a {kind}")

    def set_owners(self, kind: str, name: str, owners: list[dict]) -> None:
        """Make ``owners`` (created workloads) the owners of a ConfigMap or NetworkPolicy: deleted with them."""
        refs = [{"apiVersion": o["apiVersion"] if "apiVersion" in o else o["api_version"], "kind": o["kind"],
                 "name": o["metadata"]["name"], "uid": o["metadata"]["uid"]} for o in owners]
        patch = {"metadata": {"ownerReferences": refs}}
        if kind == "ConfigMap":
            self.core.patch_namespaced_config_map(name, self.namespace, patch)
        elif kind == "NetworkPolicy":
            self.networking.patch_namespaced_network_policy(name, self.namespace, patch)

    def delete(self, kind: str, name: str) -> None:
        from kubernetes import client

        options = client.V1DeleteOptions(propagation_policy="Foreground")
        try:
            if kind == "ConfigMap":
                self.core.delete_namespaced_config_map(name, self.namespace)
            elif kind == "NetworkPolicy":
                self.networking.delete_namespaced_network_policy(name, self.namespace)
            elif kind == "Job":
                self.batch.delete_namespaced_job(name, self.namespace, body=options)
            elif kind == "PyTorchJob":
                self.custom.delete_namespaced_custom_object(*PYTORCHJOB[:2], self.namespace, PYTORCHJOB[2], name,
                                                            body=options)
        except self.ApiException as exc:
            if exc.status != 404:
                raise


def pod_requests(obj: dict, resource: str) -> list[dict[str, float]]:
    """What each pod of a workload asks of a node (``resource`` GPUs, cpu, memory, ephemeral-storage): its
    containers' requests plus its native sidecars' (which run beside them)."""
    from kubernetes.utils import parse_quantity

    templates = [obj["spec"]["template"]] if obj["kind"] == "Job" else [
        r["template"] for r in obj["spec"]["pytorchReplicaSpecs"].values()]
    running = [t["spec"]["containers"] + [c for c in t["spec"].get("initContainers", [])
                                          if c.get("restartPolicy") == "Always"] for t in templates]
    out = []
    for cs in running:
        need = {}
        for key in (resource, *FIT_RESOURCES):
            need[key] = float(sum(parse_quantity(c["resources"].get("requests", {}).get(
                key, c["resources"].get("limits", {}).get(key, 0))) for c in cs))
        out.append(need)
    return out


FIT_RESOURCES = ("cpu", "memory", "ephemeral-storage")


def _amount(key: str, value: float) -> str:
    if key in ("memory", "ephemeral-storage"):
        return f"{value / 2**30:.0f}Gi {key}"
    return f"{value:g} {key}"


def check_fits(objects: list[dict], cluster: Cluster, resource: str) -> None:
    """Refuse a run whose pod no node can hold: GPUs, CPUs, memory and local disk all at once (it would stay
    Pending for ever). The message names the node size that would fit."""
    from kubernetes.utils import parse_quantity

    nodes = cluster.node_allocatable()
    if nodes is None:
        logger.info("cannot list nodes (no permission): fit not checked")
        return
    have = [{k: float(parse_quantity(n.get(k, "0"))) for k in (resource, *FIT_RESOURCES)} for n in nodes]
    for obj in objects:
        if obj["kind"] not in WORKLOADS:
            continue
        for need in pod_requests(obj, resource):
            # A node that reports no ephemeral-storage is not checked for it (the scheduler does the same).
            keys = [k for k in need if need[k] and (k != "ephemeral-storage" or any(h[k] for h in have))]
            if any(all(h[k] >= need[k] for k in keys) for h in have):
                continue
            short = sorted({k for h in have for k in keys if h[k] < need[k]})
            largest = ", ".join(_amount(k, max((h[k] for h in have), default=0)) for k in short)
            raise UserError(
                f"{obj['kind']}/{obj['metadata']['name']}: a pod needs " + ", ".join(_amount(k, need[k]) for k in keys)
                + f" on one node, but no node of {len(nodes)} has that much {' and '.join(short)} (the largest has "
                f"{largest}); a node with at least " + ", ".join(_amount(k, need[k]) for k in keys) + " would fit it. "
                "Lower grpo_gpus_per_node / sft_gpus_per_node / tensor_parallel_size, cpu_per_gpu, memory_per_gpu, "
                "cpu_pod_cpu / cpu_pod_memory (pods without a GPU) or hf_cache_size in the settings or config")


def check_prerequisites(objects: list[dict], cluster: Cluster) -> None:
    """Refuse a run whose pods name a PVC or service account the namespace lacks (they would wait for ever)."""
    needed = set()
    for obj in objects:
        for spec in ([obj["spec"]["template"]["spec"]] if obj["kind"] == "Job" else [
                r["template"]["spec"] for r in obj["spec"]["pytorchReplicaSpecs"].values()] if obj["kind"] ==
                "PyTorchJob" else []):
            needed |= {("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"])
                       for v in spec["volumes"] if "persistentVolumeClaim" in v}
            if spec.get("serviceAccountName"):
                needed.add(("ServiceAccount", spec["serviceAccountName"]))
    absent = [f"{kind} {name}" for kind, name in sorted(needed) if cluster.missing(kind, name)]
    if absent:
        raise UserError(f"namespace {cluster.namespace} has no {', '.join(absent)}: create them first "
                        "(k8s/pvc.yaml, k8s/model-cache-pvc.yaml, k8s/rbac.yaml)")
    for kind, name in sorted(needed):
        if kind == "PersistentVolumeClaim" and (pvc := cluster.claim(name)) is not None:
            check_claim(pvc, cluster.namespace)


def check_claim(pvc, namespace: str) -> None:
    """Refuse a claim that is not ReadWriteMany (every pod of a run, on any node, mounts it); warn about one that
    is not bound yet (a class that cannot provide ReadWriteMany leaves it Pending for ever)."""
    name, modes = pvc.metadata.name, pvc.spec.access_modes or []
    storage_class = pvc.spec.storage_class_name
    where = f"PersistentVolumeClaim {namespace}/{name} (storageClassName: {storage_class or 'the default class'})"
    if "ReadWriteMany" not in modes:
        raise UserError(f"{where} has access modes {', '.join(modes) or 'none'}, not ReadWriteMany: the run's pods on "
                        "several nodes (and the merge beside the shards) could not all mount it. Recreate it with "
                        "accessModes [ReadWriteMany] and storageClassName set to a class that provides it (NFS, "
                        "CephFS, EFS, Filestore, Azure Files; see k8s/pvc.yaml)")
    phase = pvc.status.phase if pvc.status else None
    if phase != "Bound":
        logger.warning("%s is %s, not Bound: if its class cannot provide ReadWriteMany it stays so for ever and "
                       "every pod waits (`kubectl -n %s describe pvc %s` shows why); a WaitForFirstConsumer class "
                       "binds once the first pod is scheduled", where, phase or "unknown", namespace, name)


def submit(run: Run, cluster: Cluster, replace: bool = False, pytorchjob_schema: dict | None = None) -> list[str]:
    """Validate, check the GPU fit, refuse an existing run unless ``replace``, create the objects (deleting the
    created ones again if a later create fails), then hand the ConfigMap and NetworkPolicy to the workloads;
    returns 'Kind/name' created."""
    objects = render_objects(run)
    if pytorchjob_schema is None and any(o["kind"] == "PyTorchJob" for o in objects):
        pytorchjob_schema = cluster.pytorchjob_schema()
    problems = validate_objects(objects, run.settings.kubernetes_version, pytorchjob_schema)
    if problems:
        raise UserError("the rendered objects do not validate:\n  " + "\n  ".join(problems))
    check_fits(objects, cluster, run.settings.gpu_resource)
    check_prerequisites(objects, cluster)
    existing = cluster.run_objects(run.name)
    if existing:
        if not replace:
            names = ", ".join(f"{k}/{n}" for k, n in existing)
            raise UserError(f"run '{run.name}' already exists in namespace {cluster.namespace} ({names}); "
                            "pass --replace to delete and recreate it, or --name to pick another name")
        cancel(run.name, cluster, wait=True)
    created, workloads = [], []
    try:
        for obj in objects:
            result = cluster.create(obj)
            created.append((obj["kind"], obj["metadata"]["name"]))
            logger.info("created %s/%s", *created[-1])
            if obj["kind"] in WORKLOADS:
                workloads.append(result)
        for kind, name in created:
            if kind not in WORKLOADS:
                cluster.set_owners(kind, name, workloads)
    except cluster.ApiException as exc:
        for kind, name in reversed(created):
            cluster.delete(kind, name)
        done = ", ".join(f"{k}/{n}" for k, n in created) or "nothing"
        raise UserError(f"run '{run.name}': the API server refused an object ({exc.status} {exc.reason}: "
                        f"{_api_message(exc)}); deleted what was already created ({done})") from None
    return [f"{k}/{n}" for k, n in created]


def _api_message(exc) -> str:
    import json

    try:
        return json.loads(exc.body).get("message", exc.body)
    except (TypeError, ValueError):
        return str(exc.body)


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


def _waiting_reason(pod) -> str | None:
    """Why a pod is not running yet (unschedulable, image pull, ...), or None."""
    for cond in pod.status.conditions or []:
        if cond.type == "PodScheduled" and cond.status != "True":
            return f"{cond.reason}: {cond.message}"
    for cs in (pod.status.init_container_statuses or []) + (pod.status.container_statuses or []):
        if cs.state and cs.state.waiting and cs.state.waiting.reason:
            return f"{cs.name}: {cs.state.waiting.reason} {cs.state.waiting.message or ''}".strip()
    return None


def status(name: str, cluster: Cluster) -> dict:
    """The run's objects, its pods' phases, and why a pending pod waits."""
    objects = cluster.run_objects(name)
    if not objects:
        raise UserError(f"no run '{name}' in namespace {cluster.namespace}")
    pods = cluster.pods(name)
    out = {
        "run": name,
        "objects": [f"{k}/{n}" for k, n in objects],
        "pods": {p.metadata.name: p.status.phase for p in pods},
    }
    waiting = {p.metadata.name: r for p in pods if p.status.phase == "Pending" and (r := _waiting_reason(p))}
    if waiting:
        out["waiting"] = waiting
    return out


def _main_container(pod, container: str | None) -> str:
    return container or pod.spec.containers[0].name


def _started(pod, container: str) -> bool:
    for cs in (pod.status.container_statuses or []) + (pod.status.init_container_statuses or []):
        if cs.name == container:
            return bool(cs.state and (cs.state.running or cs.state.terminated))
    return False


def _not_started(pod, container: str) -> str:
    where = f"on node {pod.spec.node_name}" if pod.spec.node_name else "not scheduled to a node"
    why = _waiting_reason(pod)
    return (f"pod {pod.metadata.name}: container {container} has not started yet ({pod.status.phase}, {where}"
            + (f"; {why}" if why else "") + "): no logs to show")


def logs(name: str, cluster: Cluster, follow: bool = False, container: str | None = None, out=None,
         poll_seconds: float = 5.0) -> None:
    """Print the logs of the run's pods (their main container unless ``container``). ``follow``: stream every
    pod of the run, each line prefixed with the pod's name, including pods that start later, until all end."""
    out = out or sys.stdout
    pods = sorted(cluster.pods(name), key=lambda p: p.metadata.name)
    if not pods:
        raise UserError(f"run '{name}' has no pods yet in namespace {cluster.namespace}")
    if not follow:
        for pod in pods:
            cname = _main_container(pod, container)
            if not _started(pod, cname):
                print(_not_started(pod, cname), file=sys.stderr)
                continue
            if len(pods) > 1:
                print(f"==> {pod.metadata.name} ({cname}) <==", file=out)
            out.write(cluster.core.read_namespaced_pod_log(pod.metadata.name, cluster.namespace, container=cname))
        return
    lock, threads, told = threading.Lock(), {}, set()

    def stream(pod_name: str, cname: str) -> None:
        try:
            resp = cluster.core.read_namespaced_pod_log(pod_name, cluster.namespace, container=cname, follow=True,
                                                        _preload_content=False)
        except cluster.ApiException as exc:
            with lock:
                print(f"[{pod_name}] no logs: {exc.status} {_api_message(exc)}", file=sys.stderr)
            return
        pending = b""
        for chunk in resp.stream():
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            with lock:
                for line in lines:
                    out.write(f"[{pod_name}] {line.decode(errors='replace')}\n")
                out.flush()
        if pending:
            with lock:
                out.write(f"[{pod_name}] {pending.decode(errors='replace')}\n")

    while True:
        pods = cluster.pods(name)
        for pod in pods:
            cname = _main_container(pod, container)
            # Keyed by uid: the operator recreates a failed PyTorchJob pod under the same name (…-master-0).
            if pod.metadata.uid in threads:
                continue
            if _started(pod, cname):
                t = threading.Thread(target=stream, args=(pod.metadata.name, cname), daemon=True)
                threads[pod.metadata.uid] = t
                t.start()
            elif pod.metadata.uid not in told:
                told.add(pod.metadata.uid)
                with lock:
                    print(_not_started(pod, cname).replace("no logs to show", "waiting"), file=sys.stderr)
        live = [p for p in pods if p.status.phase in ("Pending", "Running")]
        # A failed pod's successor may not exist yet (the Job controller or the operator makes it): the run ends
        # only when its workloads do.
        if not live and all(not t.is_alive() for t in threads.values()) and not cluster.unfinished(name):
            return
        time.sleep(poll_seconds)
