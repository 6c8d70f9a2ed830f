"""The submitter's API calls: create, refuse an existing run, replace, status, logs, cancel.

`test_*_on_a_real_cluster` runs against the API server of $KUBECONFIG when one is reachable (pytest -m cluster)
and is skipped otherwise with the reason. No API server can run on the CI machine, so the same calls are also
driven through the real `kubernetes` client against a stub API server on localhost (`StubApiServer`): a stand-in
for the cluster boundary, checked beside the real test, not instead of it.
"""

import json
import os
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from conftest import ROOT, SHARED, need
from rlvsdistill.cli import main

CRD = SHARED / "k8s" / "crds" / "kubeflow.org_pytorchjobs.yaml"
COLLECTIONS = {  # path prefix inside a namespace -> (apiVersion, list kind)
    "/api/v1/namespaces/{ns}/configmaps": ("v1", "ConfigMapList"),
    "/api/v1/namespaces/{ns}/pods": ("v1", "PodList"),
    "/apis/batch/v1/namespaces/{ns}/jobs": ("batch/v1", "JobList"),
    "/apis/kubeflow.org/v1/namespaces/{ns}/pytorchjobs": ("kubeflow.org/v1", "PyTorchJobList"),
}


class StubApiServer:
    """A stand-in for the Kubernetes API server: stores objects per collection and answers the submitter's calls
    (list with a label selector, create with 409 on a duplicate, delete, read the PyTorchJob CRD, pod logs).
    Creating a Job also creates one running pod for it, as a cluster would."""

    def __init__(self, namespace="rlvsdistill"):
        self.ns = namespace
        self.store = {p.format(ns=namespace): {} for p in COLLECTIONS}
        self.calls = []
        crd = yaml.safe_load(need(CRD).read_text())
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, body):
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json" if not isinstance(body, str) else "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _route(self):
                url = urlparse(self.path)
                for prefix in server.store:
                    if url.path == prefix:
                        return prefix, None, url
                    if url.path.startswith(prefix + "/"):
                        return prefix, url.path[len(prefix) + 1:], url
                return None, None, url

            def do_GET(self):
                server.calls.append(("GET", self.path))
                if self.path.startswith("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"):
                    return self._send(200, crd)
                prefix, name, url = self._route()
                if prefix is None:
                    return self._send(404, {"kind": "Status", "code": 404})
                if name and name.endswith("/log"):
                    return self._send(200, f"log of {name[:-4]} container={parse_qs(url.query)['container'][0]}\n")
                selector = parse_qs(url.query).get("labelSelector", [""])[0]
                key, _, value = selector.partition("=")
                items = [o for o in server.store[prefix].values()
                         if not key or o["metadata"].get("labels", {}).get(key) == value]
                api, kind = next(v for p, v in COLLECTIONS.items() if p.format(ns=server.ns) == prefix)
                return self._send(200, {"apiVersion": api, "kind": kind, "metadata": {}, "items": items})

            def do_POST(self):
                server.calls.append(("POST", self.path))
                prefix, _, _ = self._route()
                obj = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                name = obj["metadata"]["name"]
                if name in server.store[prefix]:
                    return self._send(409, {"kind": "Status", "code": 409, "reason": "AlreadyExists"})
                obj["metadata"]["uid"] = str(uuid.uuid4())
                server.store[prefix][name] = obj
                if obj["kind"] == "Job":
                    pod = {"apiVersion": "v1", "kind": "Pod",
                           "metadata": {"name": f"{name}-abcde", "labels": obj["spec"]["template"]["metadata"]["labels"]},
                           "spec": obj["spec"]["template"]["spec"], "status": {"phase": "Running"}}
                    server.store[f"/api/v1/namespaces/{server.ns}/pods"][pod["metadata"]["name"]] = pod
                return self._send(201, obj)

            def do_DELETE(self):
                server.calls.append(("DELETE", self.path))
                prefix, name, _ = self._route()
                obj = server.store[prefix].pop(name, None)
                if obj is None:
                    return self._send(404, {"kind": "Status", "code": 404})
                if obj["kind"] == "Job":
                    pods = server.store[f"/api/v1/namespaces/{server.ns}/pods"]
                    for pod_name in [p for p in pods if p.startswith(name + "-")]:
                        del pods[pod_name]
                return self._send(200, {"kind": "Status", "status": "Success"})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def kubeconfig(self, path):
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "stub",
            "clusters": [{"name": "stub", "cluster": {"server": self.url}}],
            "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "stub"}}],
            "users": [{"name": "stub", "user": {}}]}))
        return path

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def stub(tmp_path, monkeypatch):
    server = StubApiServer()
    monkeypatch.setenv("KUBECONFIG", str(server.kubeconfig(tmp_path / "kubeconfig")))
    monkeypatch.chdir(ROOT)
    yield server
    server.close()


def submit_args(kind="sft", config="configs/paper/sft_qwen2.5_3b.yaml", cluster="configs/cluster/multi-node.yaml"):
    args = ["submit", kind, "--config", config, "--cluster", cluster, "--image-tag", "t1", "--name", "run-a"]
    # the 16 SFT processes of multi-node.yaml cannot make Table 7's batch of 4: the deviation stated explicitly
    return args + (["global_batch_size=16"] if cluster.endswith("multi-node.yaml") else [])


def test_submit_status_logs_cancel_against_stub_api_server(stub, capsys):
    assert main(submit_args()) == 0  # a PyTorchJob, checked against the CRD the server serves
    out = capsys.readouterr().out
    assert "run 'run-a' submitted (ConfigMap/run-a-config, PyTorchJob/run-a)" in out
    posts = [c for c in stub.calls if c[0] == "POST"]
    assert [p[1].rsplit("/", 1)[-1] for p in posts] == ["configmaps", "pytorchjobs"]  # config first
    assert ("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/pytorchjobs.kubeflow.org") in stub.calls
    created = stub.store["/apis/kubeflow.org/v1/namespaces/rlvsdistill/pytorchjobs"]["run-a"]
    assert created["metadata"]["labels"]["rlvsdistill.io/image-tag"] == "t1"

    assert main(submit_args()) == 2  # the same name again: refused, nothing sent
    assert "run 'run-a' already exists" in capsys.readouterr().err
    assert len([c for c in stub.calls if c[0] == "POST"]) == 2

    assert main(["cancel", "run-a", "--cluster", "configs/cluster/multi-node.yaml"]) == 0
    assert "deleted" in capsys.readouterr().out
    assert not stub.store["/apis/kubeflow.org/v1/namespaces/rlvsdistill/pytorchjobs"]


def test_replace_status_and_logs_of_a_job_against_stub_api_server(stub, capsys):
    single = submit_args(cluster="configs/cluster/single-node.yaml")
    assert main(single) == 0
    assert main(single + ["--replace"]) == 0  # deleted, then created again
    deletes = [c for c in stub.calls if c[0] == "DELETE"]
    assert {d[1].rsplit("/", 2)[-2] for d in deletes} == {"jobs", "configmaps"}
    capsys.readouterr()
    assert main(["status", "run-a", "--cluster", "configs/cluster/single-node.yaml"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["objects"] == ["Job/run-a", "ConfigMap/run-a-config"] and status["pods"] == {"run-a-abcde": "Running"}
    assert main(["logs", "run-a", "--cluster", "configs/cluster/single-node.yaml"]) == 0
    assert "log of run-a-abcde container=trainer" in capsys.readouterr().out


def _reachable_cluster():
    if not os.environ.get("KUBECONFIG") and not os.path.exists(os.path.expanduser("~/.kube/config")):
        return "no KUBECONFIG and no ~/.kube/config"
    try:
        from kubernetes import client, config

        config.load_kube_config()
        client.VersionApi().get_code(_request_timeout=5)
    except Exception as exc:  # noqa: BLE001 - any failure means: no cluster to test against
        return f"no reachable API server ({type(exc).__name__})"
    return None


@pytest.mark.cluster
def test_submit_status_cancel_on_a_real_cluster(capsys, monkeypatch):
    why = _reachable_cluster()
    if why:
        pytest.skip(f"real-cluster test: {why}")
    monkeypatch.chdir(ROOT)
    namespace = os.environ.get("RLVSDISTILL_TEST_NAMESPACE", "rlvsdistill")
    args = ["submit", "eval", "--config", "configs/cpu/eval_tiny.yaml", "--image-tag", "integration",
            "--name", f"it-{uuid.uuid4().hex[:8]}", "--namespace", namespace]
    name = args[-3]
    try:
        assert main(args) == 0
        assert main(args) == 2 and "already exists" in capsys.readouterr().err
        assert main(["status", name, "--namespace", namespace]) == 0
        assert name in capsys.readouterr().out
    finally:
        assert main(["cancel", name, "--namespace", namespace]) == 0
