"""A real Kubernetes control plane for the tests, in the spirit of Go's envtest.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler run on 127.0.0.1 (free ports) from a temporary
directory, with certificates made by openssl, an admin kubeconfig, fake Ready GPU nodes and the PyTorchJob CRD.
There is no kubelet: pods are created, admitted and scheduled, never run; tests/node.py adds a real node, with the
API server on that node's bridge address (``ControlPlane(..., address=IP)``) so pods reach it through the
``kubernetes`` Service.

Binaries: the directory named by $KUBEBUILDER_ASSETS (envtest's convention; it must also hold the controller
manager and the scheduler), else ``../shared/k8s/bin/*.xz``, unpacked and checked against its SHA256SUMS once per
machine (kept under ``~/.cache/rlvsdistill/``).
"""

from __future__ import annotations

import hashlib
import lzma
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import yaml

BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
SERVICE_RANGE, SERVICE_IP = "10.0.0.0/24", "10.0.0.1"  # the `kubernetes` Service's ClusterIP: the range's first


class Unavailable(Exception):
    """The control plane cannot run here (the message says why); its tests skip."""


def find_binaries(shared_bin: Path, dest: Path, names: tuple[str, ...] = BINARIES) -> Path:
    """A directory holding the binaries ``names``: $KUBEBUILDER_ASSETS, or ``shared_bin``'s .xz files unpacked."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets:
        missing = [b for b in names if not (Path(assets) / b).is_file()]
        if missing:
            raise Unavailable(f"KUBEBUILDER_ASSETS={assets} lacks {', '.join(missing)}")
        return Path(assets)
    if not all((shared_bin / f"{b}.xz").is_file() for b in names):
        raise Unavailable(f"no KUBEBUILDER_ASSETS and no {shared_bin}/{{{','.join(names)}}}.xz")
    sums_text = (shared_bin / "SHA256SUMS").read_text()
    sums = dict(line.split()[::-1] for line in sums_text.splitlines() if line.strip())
    # Unpacked once per machine (xz takes 10-60 s), keyed by the checksums; checked when unpacked, then renamed.
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rlvsdistill" / (
        "k8s-bin-" + hashlib.sha256((sums_text + " ".join(names)).encode()).hexdigest()[:16])
    if cache.is_dir():
        return cache
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        digest = hashlib.sha256()
        with lzma.open(shared_bin / f"{name}.xz") as src, open(dest / name, "wb") as out:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sums.get(name):
            raise RuntimeError(f"{shared_bin}/{name}.xz: SHA256 {digest.hexdigest()} does not match SHA256SUMS")
        (dest / name).chmod(0o755)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.parent / f".{cache.name}.{os.getpid()}"
        shutil.copytree(dest, tmp)
        os.replace(tmp, cache)
    except OSError:  # a read-only home, or another session got there first: use this session's copy
        pass
    return dest


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the test process dies, even by SIGKILL (Linux)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def sign_cert(d: Path, name: str, subject: str, ext: str = "client.ext") -> None:
    """``d/name.key`` and ``d/name.crt`` for ``subject``, signed by the CA in ``d`` (a client cert by default)."""
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", subject, cwd=d)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", f"{name}.crt", "-days", "2", "-extfile", ext, cwd=d)


def make_certs(d: Path, address: str = "127.0.0.1") -> None:
    """CA, serving cert (loopback and ``address`` SANs), admin client cert (system:masters), service-account keys."""
    if not shutil.which("openssl"):
        raise Unavailable("openssl is not installed")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=test-ca", cwd=d)
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
                               "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,"
                               f"IP:{address},IP:{SERVICE_IP}\n"
                               "extendedKeyUsage=serverAuth\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    sign_cert(d, "server", "/CN=kube-apiserver", "san.ext")
    sign_cert(d, "admin", "/O=system:masters/CN=admin")
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=d)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)


class ControlPlane:
    """Start with ``ControlPlane(bindir, workdir).start()``; ``stop()`` kills every process group it started.

    ``address``: where the API server listens and what it advertises. Loopback (the default) for fake nodes; a
    real node's bridge address (tests/node.py) for pods to reach it through the ``kubernetes`` Service, which
    also turns on what a kubelet needs: the endpoint reconciler, the Node authorizer, and the API server's
    client certificate for the kubelet (``kubectl logs``, ``exec``, ``cp``)."""

    def __init__(self, bindir: Path, workdir: Path, address: str = "127.0.0.1"):
        self.bin, self.dir, self.address = bindir, workdir, address
        self.procs: list[subprocess.Popen] = []
        self.kubeconfig = workdir / "kubeconfig"
        self.apiserver_port = free_port()
        self.server = f"https://{address}:{self.apiserver_port}"
        self.started_in = None  # seconds from start() to all four ready

    # -- processes ---------------------------------------------------------------------------------------

    def _spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.dir / f"{name}.log", "wb")
        proc = subprocess.Popen([str(self.bin / name), *args], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True,  # its own process group: stop() kills it whole
                                preexec_fn=_die_with_parent)
        log.close()
        self.procs.append(proc)
        return proc

    def _wait_ready(self, name: str, proc: subprocess.Popen, url: str, timeout: float = 60) -> None:
        ctx = ssl.create_default_context(cafile=str(self.dir / "ca.crt"))
        ctx.load_cert_chain(str(self.dir / "admin.crt"), str(self.dir / "admin.key"))
        if url.startswith("http://"):
            ctx = None
        elif ":" + str(self.apiserver_port) not in url:
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # self-signed serving certs
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")
            try:
                with urllib.request.urlopen(url, context=ctx, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready at {url} after {timeout:.0f}s:\n{self.log_tail(name)}")
            time.sleep(0.2)

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def start(self) -> "ControlPlane":
        t0 = time.monotonic()
        d = self.dir
        make_certs(d, self.address)
        etcd_port, peer_port = free_port(), free_port()
        etcd = self._spawn("etcd", "--data-dir", str(d / "etcd"), "--name", "test",
                           "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
                           "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
                           "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
                           "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
                           "--initial-cluster", f"test=http://127.0.0.1:{peer_port}", "--log-level", "warn")
        self._wait_ready("etcd", etcd, f"http://127.0.0.1:{etcd_port}/health")
        if self.address == "127.0.0.1":  # fake nodes only: no endpoints (a loopback one is refused), no kubelet
            node_flags = ["--authorization-mode=RBAC", "--endpoint-reconciler-type=none"]
        else:
            node_flags = ["--authorization-mode=Node,RBAC", "--kubelet-preferred-address-types=InternalIP",
                          f"--kubelet-client-certificate={d / 'admin.crt'}", f"--kubelet-client-key={d / 'admin.key'}"]
        api = self._spawn(
            "kube-apiserver", f"--bind-address={self.address}", f"--advertise-address={self.address}",
            f"--secure-port={self.apiserver_port}", f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            f"--tls-cert-file={d / 'server.crt'}", f"--tls-private-key-file={d / 'server.key'}",
            f"--client-ca-file={d / 'ca.crt'}", *node_flags, "--anonymous-auth=false",
            f"--service-cluster-ip-range={SERVICE_RANGE}",
            f"--service-account-issuer={SA_ISSUER}", f"--service-account-key-file={d / 'sa.pub'}",
            f"--service-account-signing-key-file={d / 'sa.key'}", f"--api-audiences={SA_ISSUER}",
            f"--cert-dir={d / 'apiserver-certs'}")
        self._write_kubeconfig()
        self._wait_ready("kube-apiserver", api, f"{self.server}/readyz")
        common = [f"--kubeconfig={self.kubeconfig}", f"--authentication-kubeconfig={self.kubeconfig}",
                  f"--authorization-kubeconfig={self.kubeconfig}", "--authentication-skip-lookup=true",
                  f"--client-ca-file={d / 'ca.crt'}", "--bind-address=127.0.0.1", "--leader-elect=false"]
        cm_port, sched_port = free_port(), free_port()
        cm = self._spawn("kube-controller-manager", *common, f"--secure-port={cm_port}",
                         "--controllers=*,-node-lifecycle-controller,-taint-eviction-controller",
                         f"--service-account-private-key-file={d / 'sa.key'}", f"--root-ca-file={d / 'ca.crt'}",
                         "--use-service-account-credentials=true", f"--cert-dir={d / 'cm-certs'}")
        sched = self._spawn("kube-scheduler", *common, f"--secure-port={sched_port}", f"--cert-dir={d / 'sched-certs'}")
        self._wait_ready("kube-controller-manager", cm, f"https://127.0.0.1:{cm_port}/healthz")
        self._wait_ready("kube-scheduler", sched, f"https://127.0.0.1:{sched_port}/readyz")
        self.started_in = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """SIGTERM every process group, then SIGKILL what is left after 10 s."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()

    def stop_apiserver(self) -> list[str]:
        """Kill kube-apiserver (SIGKILL, its process group: its graceful shutdown takes over 30 s), as an API server
        crash or outage would; returns its arguments for ``start_apiserver``."""
        [api] = [p for p in self.procs if Path(p.args[0]).name == "kube-apiserver" and p.poll() is None]
        os.killpg(api.pid, signal.SIGKILL)
        api.wait()
        self.procs.remove(api)
        return list(api.args[1:])

    def start_apiserver(self, args: list[str]) -> None:
        """Start kube-apiserver again, on the same port and etcd, and wait until it is ready."""
        api = self._spawn("kube-apiserver", *args)
        self._wait_ready("kube-apiserver", api, f"{self.server}/readyz")

    # -- clients and objects ---------------------------------------------------------------------------

    def _write_kubeconfig(self) -> None:
        self.write_kubeconfig(self.kubeconfig, "admin")

    def write_kubeconfig(self, path: Path, cert: str) -> Path:
        """A kubeconfig at ``path`` for the user of the client cert ``self.dir/cert.crt`` (``sign_cert``)."""
        d = self.dir
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "envtest",
            "clusters": [{"name": "envtest", "cluster": {"server": self.server,
                                                         "certificate-authority": str(d / "ca.crt")}}],
            "contexts": [{"name": "envtest", "context": {"cluster": "envtest", "user": cert}}],
            "users": [{"name": cert, "user": {"client-certificate": str(d / f"{cert}.crt"),
                                               "client-key": str(d / f"{cert}.key")}}]}))
        return path

    def api_client(self):
        """A `kubernetes` ApiClient for the admin user (its own Configuration: no global state)."""
        from kubernetes import client, config

        cfg = client.Configuration()
        config.load_kube_config(config_file=str(self.kubeconfig), client_configuration=cfg)
        return client.ApiClient(cfg)

    def add_gpu_node(self, name: str, gpus: int = 8, cpu: str = "128", memory: str = "2Ti",
                     disk: str = "2Ti") -> None:
        """A Ready Node with ``gpus`` nvidia.com/gpu, schedulable (the not-ready taint removed)."""
        from kubernetes import client

        core = client.CoreV1Api(self.api_client())
        core.create_node({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name,
                                                               "nvidia.com/gpu.present": "true"}}})
        capacity = {"cpu": cpu, "memory": memory, "ephemeral-storage": disk, "pods": "110", "nvidia.com/gpu": str(gpus)}
        core.patch_node_status(name, {"status": {
            "capacity": capacity, "allocatable": capacity,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "fake node (no kubelet)"}]}})
        node = core.read_node(name)
        taints = [t for t in node.spec.taints or [] if t.key != "node.kubernetes.io/not-ready"]
        core.patch_node(name, {"spec": {"taints": core.api_client.sanitize_for_serialization(taints) or None}})

    def install_crd(self, path: Path, timeout: float = 30) -> None:
        """Create a CRD from its YAML file and wait until it is Established."""
        from kubernetes import client

        api = client.ApiextensionsV1Api(self.api_client())
        crd = yaml.safe_load(path.read_text())
        api.create_custom_resource_definition(crd)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = api.read_custom_resource_definition(crd["metadata"]["name"])
            if any(c.type == "Established" and c.status == "True" for c in got.status.conditions or []):
                return
            time.sleep(0.2)
        raise RuntimeError(f"CRD {crd['metadata']['name']} not Established after {timeout:.0f}s")
