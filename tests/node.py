"""A real node for the end-to-end tests: containerd, a kubelet and kube-proxy beside tests/controlplane.py.

What runs (as root; ../shared/k8s/README.md has the settings seen working here):
- a Linux bridge on a free private /24 (``pick_subnet``): its first address is the node's IP, the API server's
  address, and the pods' gateway. Pods get routes to that subnet and to the Service range only, no default route:
  nothing they send can leave this machine;
- containerd with its own root, state and socket under the node's directory, the bridge CNI network, and a pause
  image made here from ../shared/k8s/bin/pause;
- the kubelet (cgroupfs, its cgroups under ``/rlvsdistill-e2e``), which registers the node; the node then
  advertises ``gpus`` ``nvidia.com/gpu`` as an extended resource, so GPU requests schedule as on a GPU node;
- kube-proxy in iptables mode, so the ``kubernetes`` Service reaches the API server, as in-cluster config expects.

``Node.stop()`` removes every pod, then every process, container, mount, cgroup, iptables chain, netns and link it
made; ``host_state()`` snapshots what the machine has of those, for the test that nothing is left behind.
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import yaml

from controlplane import SERVICE_RANGE, ControlPlane, Unavailable, _die_with_parent, free_port, sign_cert

NODE_BINARIES = ("kubelet", "kube-proxy", "pause", "kubectl")
HOST_TOOLS = ("containerd", "containerd-shim-runc-v2", "ctr", "runc", "ip", "iptables", "ip6tables")
CNI_DIR = Path("/usr/lib/cni")
BRIDGE = "rlvsd-e2e0"
CGROUP_ROOT = "/rlvsdistill-e2e"
PAUSE_IMAGE = "localhost/rlvsdistill-pause:3.10"
NETWORK = "rlvsdistill-e2e"  # the CNI network's name: host-local IPAM keeps its leases under /var/lib/cni/networks/


def check_host() -> None:
    """Raise Unavailable unless this is root with the tools and the CNI plugins a node needs."""
    if os.geteuid() != 0:
        raise Unavailable("a real node needs root (namespaces, mounts, iptables)")
    missing = [t for t in HOST_TOOLS if not shutil.which(t)]
    missing += [f"{CNI_DIR}/{p}" for p in ("bridge", "host-local", "loopback") if not (CNI_DIR / p).is_file()]
    if missing:
        raise Unavailable(f"missing {', '.join(missing)} (apt-get install containerd runc "
                          "containernetworking-plugins iproute2 iptables)")


def pick_subnet() -> ipaddress.IPv4Network:
    """A private /24 that no route or address of this machine overlaps, nor the Service range."""
    used = [ipaddress.ip_network(SERVICE_RANGE)]
    for line in subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True).stdout.split("\n"):
        if m := re.search(r"inet (\S+)", line):
            used.append(ipaddress.ip_interface(m.group(1)).network)
    for line in subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=True).stdout.split("\n"):
        dst = line.split(" ", 1)[0]
        if dst and dst != "default":
            used.append(ipaddress.ip_network(dst, strict=False))
    for third in range(100, 250):
        net = ipaddress.ip_network(f"10.244.{third}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise Unavailable("no free 10.244.x.0/24 for the node's bridge")


def _run(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=timeout)


def host_state() -> dict[str, list[str]]:
    """What a node leaves behind if it leaks: its processes, mounts, links, netns, iptables chains, cgroups, leases."""
    procs = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            exe = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
        except OSError:
            continue
        if exe in ("containerd", "containerd-shim-runc-v2", "kubelet", "kube-proxy", "pause", "runc"):
            procs.append(exe)
    chains = []
    for tool in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            out = _run(tool, "-t", table, "-S", check=False).stdout
            chains += [f"{tool} -t {table} {line}" for line in out.splitlines() if "KUBE-" in line or "CNI-" in line]
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
              if "rlvsdistill" in line or "/run/netns/" in line or "kubelet" in line]
    cgroups = sorted(str(p) for p in Path("/sys/fs/cgroup").glob(f"*{CGROUP_ROOT}"))
    links = [line.split(":")[1].strip() for line in _run("ip", "-o", "link").stdout.splitlines()
             if re.search(r": (veth|rlvsd-)", line)]
    return {"processes": sorted(procs), "mounts": sorted(mounts), "links": sorted(links),
            "netns": sorted(_run("ip", "netns", "list").stdout.split()), "iptables": chains, "cgroups": cgroups,
            "cni leases": [str(p) for p in Path("/var/lib/cni/networks").glob(f"{NETWORK}*")]}


def _docker_archive(path: Path, ref: str, files: dict[str, bytes], entrypoint: list[str]) -> None:
    """A one-layer image as a `docker save` tarball (what `ctr images import` reads)."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            t.addfile(info, io.BytesIO(data))
    layer_bytes = layer.getvalue()
    diff_id = hashlib.sha256(layer_bytes).hexdigest()
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Entrypoint": entrypoint},
                         "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]}}).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [ref], "Layers": [f"{diff_id}/layer.tar"]}]).encode()
    with tarfile.open(path, "w") as t:
        for name, data in ((f"{diff_id}/layer.tar", layer_bytes), (config_name, config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))


class Node:
    """One real node, ``name``, joined to ``cp`` (a ControlPlane started with ``address=bridge_ip(subnet)``)."""

    def __init__(self, cp: ControlPlane, bindir: Path, workdir: Path, subnet: ipaddress.IPv4Network,
                 name: str = "e2e-node", gpus: int = 8):
        self.cp, self.bin, self.dir, self.subnet, self.name, self.gpus = cp, bindir, workdir, subnet, name, gpus
        self.ip = bridge_ip(subnet)
        self.procs: list[subprocess.Popen] = []
        self.socket = workdir / "containerd" / "containerd.sock"
        self.kubelet_root = workdir / "kubelet"
        self.started_in = None

    # -- start ---------------------------------------------------------------------------------------------

    def start(self) -> "Node":
        """containerd, the kubelet (the node registers Ready, with its GPUs) and kube-proxy; ``make_bridge`` first."""
        t0 = time.monotonic()
        self._containerd()
        self._kubelet()
        self._register()
        self._kube_proxy()
        self.started_in = time.monotonic() - t0
        return self

    def _spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.dir / f"{name}.log", "wb")
        proc = subprocess.Popen(list(args), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_die_with_parent)
        log.close()
        self.procs.append(proc)
        return proc

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def _wait(self, what: str, predicate, proc: subprocess.Popen | None = None, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if proc is not None and proc.poll() is not None:
                name = Path(proc.args[0]).name
                raise RuntimeError(f"{name} exited with {proc.returncode} before {what}:\n{self.log_tail(name)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(0.3)

    def make_bridge(self) -> None:
        """The node's bridge and address: before the control plane starts, which listens on it."""
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "addr", "add", f"{self.ip}/{self.subnet.prefixlen}", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")

    def _containerd(self) -> None:
        d = self.dir / "containerd"
        (d / "cni").mkdir(parents=True)
        # Routes to the node's subnet (on-link) and the Service range, no default route: pods reach the API server
        # through its Service and each other, and nothing else.
        (d / "cni" / "10-rlvsdistill.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": NETWORK, "plugins": [
                {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "isDefaultGateway": False, "ipMasq": False,
                 "hairpinMode": True, "ipam": {"type": "host-local", "ranges": [[{
                     "subnet": str(self.subnet), "gateway": self.ip,
                     "rangeStart": str(self.subnet[10]), "rangeEnd": str(self.subnet[250])}]],
                     "routes": [{"dst": SERVICE_RANGE, "gw": self.ip}]}},
                {"type": "loopback"}]}))
        config = _run("containerd", "config", "default").stdout
        for pattern, value in ((r'sandbox_image = ".*"', f'sandbox_image = "{PAUSE_IMAGE}"'),
                               (r'bin_dir = ".*"', f'bin_dir = "{CNI_DIR}"'),
                               (r'conf_dir = ".*"', f'conf_dir = "{d / "cni"}"'),
                               (r"restrict_oom_score_adj = \w+", "restrict_oom_score_adj = true"),
                               (r"SystemdCgroup = \w+", "SystemdCgroup = false")):
            config, n = re.subn(pattern, value, config)
            assert n >= 1, f"containerd's default config has no {pattern!r}"
        (d / "config.toml").write_text(config)
        proc = self._spawn("containerd", "containerd", "--config", str(d / "config.toml"), "--root", str(d / "root"),
                           "--state", str(d / "state"), "--address", str(self.socket))
        self._wait("containerd's socket", lambda: self.ctr("version", check=False).returncode == 0, proc, 60)
        pause = self.dir / "pause.tar"
        _docker_archive(pause, PAUSE_IMAGE, {"pause": (self.bin / "pause").read_bytes()}, ["/pause"])
        self.import_image(pause)

    def ctr(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        """``ctr`` against this node's containerd, in the kubelet's ``k8s.io`` namespace."""
        return _run("ctr", "--address", str(self.socket), "-n", "k8s.io", *args, check=check, timeout=timeout)

    def import_image(self, archive: Path, timeout: float = 1800) -> None:
        """Import a docker-archive or oci-archive tarball for the kubelet (pods with imagePullPolicy: Never)."""
        self.ctr("images", "import", str(archive), timeout=timeout)

    def _kubelet(self) -> None:
        d = self.dir
        sign_cert(self.cp.dir, "kubelet", f"/O=system:nodes/CN=system:node:{self.name}")
        kubeconfig = self.cp.write_kubeconfig(d / "kubelet.kubeconfig", "kubelet")
        self.healthz = free_port()
        for hierarchy in Path("/sys/fs/cgroup").iterdir():  # the kubelet's cgroupRoot must exist in each (v1)
            if hierarchy.is_dir() and (hierarchy / "cgroup.procs").exists():
                (hierarchy / CGROUP_ROOT.lstrip("/")).mkdir(exist_ok=True)
        (d / "resolv.conf").write_text("")  # no cluster DNS, and nothing to resolve outside
        (d / "kubelet.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "cgroupDriver": "cgroupfs", "cgroupRoot": CGROUP_ROOT, "containerRuntimeEndpoint": f"unix://{self.socket}",
            "failSwapOn": False, "address": self.ip, "port": free_port(), "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": self.healthz, "resolvConf": str(d / "resolv.conf"),
            "authentication": {"x509": {"clientCAFile": str(self.cp.dir / "ca.crt")}, "webhook": {"enabled": True},
                               "anonymous": {"enabled": False}},
            "authorization": {"mode": "Webhook"},
            # The machine's disk is shared with the image builds: never evict or garbage-collect images for it.
            "evictionHard": {"memory.available": "200Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False, "nodeStatusUpdateFrequency": "5s"}))
        proc = self._spawn("kubelet", str(self.bin / "kubelet"), f"--config={d / 'kubelet.yaml'}",
                           f"--kubeconfig={kubeconfig}", f"--root-dir={self.kubelet_root}",
                           f"--hostname-override={self.name}", f"--node-ip={self.ip}", "--v=1")
        self._wait("the kubelet's healthz", lambda: _healthy(f"http://127.0.0.1:{self.healthz}/healthz"), proc)

    def _register(self) -> None:
        from kubernetes import client

        core = client.CoreV1Api(self.cp.api_client())

        def ready():
            try:
                node = core.read_node(self.name)
            except client.ApiException:
                return False
            return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])

        self._wait(f"node {self.name} Ready", ready, self.procs[-1])
        # An extended resource, as the Kubernetes docs advertise one: the kubelet keeps it in the node's status.
        core.patch_node_status(self.name, [{"op": "add", "path": "/status/capacity/nvidia.com~1gpu",
                                            "value": str(self.gpus)}])
        core.patch_node(self.name, {"metadata": {"labels": {"nvidia.com/gpu.present": "true"}}})
        # The node-lifecycle controller is off (as for the fake nodes): lift the taint it would lift.
        node = core.read_node(self.name)
        taints = [t for t in node.spec.taints or [] if t.key != "node.kubernetes.io/not-ready"]
        core.patch_node(self.name, {"spec": {"taints": core.api_client.sanitize_for_serialization(taints) or None}})
        self._wait("nvidia.com/gpu allocatable", lambda: (core.read_node(self.name).status.allocatable or {}).get(
            "nvidia.com/gpu") == str(self.gpus), timeout=60)

    def _kube_proxy(self) -> None:
        d = self.dir
        self.proxy_healthz = free_port()
        (d / "kube-proxy.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration", "mode": "iptables",
            "clusterCIDR": str(self.subnet), "bindAddress": self.ip, "hostnameOverride": self.name,
            "healthzBindAddress": f"127.0.0.1:{self.proxy_healthz}", "metricsBindAddress": f"127.0.0.1:{free_port()}",
            "conntrack": {"maxPerCore": 0}, "clientConnection": {"kubeconfig": str(self.cp.kubeconfig)}}))
        proc = self._spawn("kube-proxy", str(self.bin / "kube-proxy"), f"--config={d / 'kube-proxy.yaml'}", "--v=1")
        self._wait("kube-proxy's healthz", lambda: _healthy(f"http://127.0.0.1:{self.proxy_healthz}/healthz"), proc)

    # -- stop ----------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Delete every pod (their containers and netns go with them), stop the processes, then remove what the
        kubelet, containerd, CNI and kube-proxy leave behind. Best effort at each step: the next still runs."""
        self._delete_pods()
        for proc in reversed(self.procs):  # kube-proxy, kubelet, then containerd
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        self.procs.clear()
        _kill_shims(self.dir)
        for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
            target = line.split()[4]
            if target.startswith(str(self.dir)) or (target.startswith("/run/netns/cni-")):
                _run("umount", "-l", target, check=False)
        for ns in Path("/run/netns").glob("cni-*"):
            ns.unlink(missing_ok=True)
        if (self.bin / "kube-proxy").exists():
            _run(str(self.bin / "kube-proxy"), "--cleanup", check=False)  # exits 1 here (no ipset), yet cleans
        _delete_chains()
        _run("ip", "link", "del", BRIDGE, check=False)
        for link in _run("ip", "-o", "link").stdout.splitlines():
            if f"master {BRIDGE}" in link:
                _run("ip", "link", "del", link.split(":")[1].strip().split("@")[0], check=False)
        shutil.rmtree(Path("/var/lib/cni/networks") / NETWORK, ignore_errors=True)
        for hierarchy in Path("/sys/fs/cgroup").glob(f"*{CGROUP_ROOT}"):
            for sub in sorted(hierarchy.rglob("*"), key=lambda p: len(p.parts), reverse=True) + [hierarchy]:
                if sub.is_dir():
                    try:
                        sub.rmdir()
                    except OSError:
                        pass

    def _delete_pods(self, timeout: float = 120) -> None:
        if not any(p.poll() is None for p in self.procs):
            return
        from kubernetes import client

        core = client.CoreV1Api(self.cp.api_client())
        try:
            for pod in core.list_pod_for_all_namespaces().items:
                core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and (core.list_pod_for_all_namespaces().items
                                                   or self.ctr("containers", "ls", "-q", check=False).stdout.strip()):
                time.sleep(0.5)
        except Exception as exc:  # the API server is gone: containerd's own cleanup below still runs
            print(f"node teardown: deleting pods through the API failed ({exc}); removing containers directly")
        for cid in self.ctr("containers", "ls", "-q", check=False).stdout.split():
            self.ctr("tasks", "kill", "-s", "SIGKILL", cid, check=False)
            self.ctr("tasks", "rm", "-f", cid, check=False)
            self.ctr("containers", "rm", cid, check=False)


def bridge_ip(subnet: ipaddress.IPv4Network) -> str:
    """The node's own address on its bridge: the subnet's first host."""
    return str(subnet[1])


def _healthy(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _kill_shims(root: Path) -> None:
    """containerd's shims (and the containers under them) outlive containerd: kill those of this node."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "containerd-shim" in cmdline and str(root) in cmdline:
            try:
                os.killpg(int(pid), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                os.kill(int(pid), signal.SIGKILL)


def _delete_chains() -> None:
    """Every KUBE-* chain (kubelet's canaries, kube-proxy's rules) and the rules that jump to them."""
    for tool in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            rules = _run(tool, "-t", table, "-S", check=False).stdout.splitlines()
            for rule in rules:
                if rule.startswith("-A ") and "KUBE-" in rule and not rule.split()[1].startswith("KUBE-"):
                    _run(tool, "-t", table, "-D", *shlex.split(rule)[1:], check=False)
            chains = [r.split()[1] for r in rules if r.startswith("-N KUBE-")]
            for chain in chains:
                _run(tool, "-t", table, "-F", chain, check=False)
            for chain in chains:
                _run(tool, "-t", table, "-X", chain, check=False)
