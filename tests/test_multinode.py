"""The rendered multi-node PyTorchJob's own container commands, run as the Master and the Worker "pods": two
process groups, each with the environment training-operator v1.9 injects and $(VAR) expanded as the kubelet does.

What differs from a real cluster, each named where it happens below: MASTER_ADDR (the Master's Service name) is
loopback, MASTER_PORT a free port (not 23456, which other runs on this machine may hold), the image's paths
(/app/configs, /etc/rlvsdistill, /data, /cache, the working directory) are files of this test, and the GPU
accelerate/DeepSpeed configs are their CPU twins (ZeRO-3 on gloo). The image itself is not used: the commands run
in this virtual environment.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from rlvsdistill.cluster import render
from rlvsdistill.cluster.render import prepare_run, render_objects
from rlvsdistill.cluster.settings import ClusterSettings
from test_train import _partition_sizes, free_port

pytestmark = pytest.mark.slow

PYTORCHJOB_PORT = 23456  # the operator's default "pytorchjob-port"; replaced below by a free port


def kubelet_expand(text: str, env: dict[str, str]) -> str:
    """$(VAR) -> env[VAR] when defined (else left as written); $$ -> $ (k8s third_party/forked/golang/expansion)."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "$" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                end = text.find(")", i + 2)
                if end != -1:
                    name = text[i + 2:end]
                    out.append(env[name] if name in env else text[i:end + 1])
                    i = end + 1
                    continue
        out.append(text[i])
        i += 1
    return "".join(out)


def test_kubelet_expansion():
    env = {"RANK": "1", "A": "x"}
    assert kubelet_expand("$(RANK)", env) == "1"
    assert kubelet_expand("$$(RANK)", env) == "$(RANK)"  # an escaped reference stays literal
    assert kubelet_expand("$(UNSET)-$(A)", env) == "$(UNSET)-x"  # undefined: left as written
    assert kubelet_expand("a$b$", env) == "a$b$"


def operator_env(job: dict, replica_type: str, index: int, master_addr: str, master_port: int) -> dict[str, str]:
    """What training-operator v1.9 appends to the "pytorch" container's env (pkg/controller.v1/pytorch/envvar.go,
    master.go): WORLD_SIZE = replicas x nprocPerNode, RANK = PET_NODE_RANK = the pod's index (Workers from 1)."""
    replicas = sum(r["replicas"] for r in job["spec"]["pytorchReplicaSpecs"].values())
    nproc = job["spec"]["nprocPerNode"]
    rank = index + (1 if replica_type == "Worker" else 0)
    return {
        "PYTHONUNBUFFERED": "0",
        "MASTER_PORT": str(master_port), "PET_MASTER_PORT": str(master_port),
        "MASTER_ADDR": master_addr, "PET_MASTER_ADDR": master_addr,
        "WORLD_SIZE": str(replicas * int(nproc)), "RANK": str(rank),
        "PET_NPROC_PER_NODE": nproc, "PET_NODE_RANK": str(rank), "PET_NNODES": str(replicas),
    }


class Pods:
    """The Master's and the Worker's "pytorch" containers of a rendered PyTorchJob, started as process groups."""

    def __init__(self, tmp: Path, config_map: dict, job: dict):
        self.tmp, self.job = tmp, job
        self.port = free_port()
        # The image's paths -> this test's files: the only rewriting of the rendered commands and env.
        (tmp / "etc").mkdir()
        config_file = tmp / "etc" / "config.yaml"
        config_file.write_text(config_map["data"]["config.yaml"])
        self.paths = {
            render.ACCELERATE_ZERO3: str(ROOT / "configs" / "accelerate" / "zero3_cpu.yaml"),
            render.DEEPSPEED_ZERO3: str(ROOT / "configs" / "deepspeed" / "zero3_tiny.json"),
            render.CONFIG_FILE: str(config_file),
        }
        self.volume = tmp / "data"  # the PVC, shared by both pods
        self.procs: dict[str, subprocess.Popen] = {}
        self.starts = 0

    def _remap(self, value: str) -> str:
        if value in self.paths:
            return self.paths[value]
        for prefix, local in (("/data", self.volume), (render.HF_CACHE, self.tmp / "hf-cache")):
            if value == prefix or value.startswith(prefix + "/"):
                return str(local) + value[len(prefix):]
        return value

    def command_and_env(self, replica_type: str) -> tuple[list[str], dict[str, str], Path]:
        template = self.job["spec"]["pytorchReplicaSpecs"][replica_type]["template"]
        [container] = [c for c in template["spec"]["containers"] if c["name"] == "pytorch"]
        assert not container["workingDir"].startswith("/app")  # /app is read-only for uid 1000
        # The image's own environment (PATH to its venv, where the package is installed), then the manifest's,
        # then the operator's; Secret references are optional and their Secrets absent here.
        env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(self.tmp / "home"),
               "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
        env.update({e["name"]: self._remap(e["value"]) for e in container["env"] if "value" in e})
        # MASTER_ADDR: the Master's headless Service name resolves to the Master pod; here that is loopback.
        env.update(operator_env(self.job, replica_type, 0, "127.0.0.1", self.port))
        command = [self._remap(kubelet_expand(arg, env)) for arg in container["command"]]
        workdir = self.tmp / f"{replica_type.lower()}-workdir"  # the pod's writable workingDir (an emptyDir)
        workdir.mkdir(exist_ok=True)
        return command, env, workdir

    def start(self) -> None:
        self.starts += 1
        for replica_type in ("Master", "Worker"):
            command, env, workdir = self.command_and_env(replica_type)
            log = open(self.tmp / f"{replica_type.lower()}-{self.starts}.log", "w")
            self.procs[replica_type] = subprocess.Popen(command, env=env, cwd=workdir, stdout=log,
                                                        stderr=subprocess.STDOUT, start_new_session=True)

    def log(self, replica_type: str, start: int | None = None) -> str:
        return (self.tmp / f"{replica_type.lower()}-{start or self.starts}.log").read_text()

    def wait(self, timeout: float) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        codes = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill(name)
                codes[name] = None
        return codes

    def kill(self, replica_type: str) -> None:
        """kill -9 of the "pod": the launcher's process group, and the training processes, which
        torch.distributed.run starts in sessions of their own (a pod's cgroup would hold them all)."""
        import psutil

        proc = self.procs[replica_type]
        try:
            launcher = psutil.Process(proc.pid)
            children = launcher.children(recursive=True)  # before the kill: orphans would be reparented
        except psutil.NoSuchProcess:
            children = []
        pgids = {proc.pid}
        for child in children:
            try:
                pgids.add(os.getpgid(child.pid))
            except ProcessLookupError:
                pass
        for pgid in pgids:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()

    def kill_all(self) -> None:
        for name in self.procs:
            self.kill(name)


def render_multinode(tmp_path: Path, tiny_model, sevens, **overrides) -> tuple[dict, dict]:
    settings = ClusterSettings(sft_nodes=2, sft_gpus_per_node=1)
    values = {"model_name_or_path": str(tiny_model), "dataset_name": str(sevens / "sft.jsonl"),
              "output_dir": "sft-multinode", "ddp_backend": "gloo", "max_length": 128, "logging_steps": 1,
              **overrides}
    run = prepare_run("sft", "configs/cpu/sft_tiny.yaml", [f"{k}={json.dumps(v)}" for k, v in values.items()],
                      settings, "registry.example.org/team/rlvsdistill:test")
    config_map, _network_policy, job = render_objects(run)
    assert job["kind"] == "PyTorchJob" and job["spec"]["nprocPerNode"] == "1"
    return config_map, job


@pytest.fixture
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def test_rendered_pytorchjob_trains_zero3_across_two_pods(tmp_path, tiny_model, sevens, at_root):
    config_map, job = render_multinode(tmp_path, tiny_model, sevens, max_steps=2, save_steps=2)
    pods = Pods(tmp_path, config_map, job)
    command, env, _ = pods.command_and_env("Worker")
    assert command[command.index("--machine_rank") + 1] == "1" and env["WORLD_SIZE"] == "2"
    assert command[command.index("--deepspeed_multinode_launcher") + 1] == "standard"
    pods.start()
    try:
        codes = pods.wait(timeout=900)
    finally:
        pods.kill_all()
    assert codes == {"Master": 0, "Worker": 0}, pods.log("Master")[-3000:] + pods.log("Worker")[-3000:]
    out = pods.volume / "runs" / "sft-multinode"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]  # one checkpoint, complete
    assert (out / "checkpoint-2" / ".complete").is_file() and (out / "final" / ".complete").is_file()
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    from transformers import AutoModelForCausalLM

    total = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model).parameters())
    sizes = _partition_sizes(out / "checkpoint-2")
    assert len(sizes) == 2 and max(sizes) <= total / 2 + 64  # each pod's process held half the optimizer state
    assert not list(Path(pods.tmp / "master-workdir").glob(".deepspeed_env"))  # no pdsh launcher


def test_rendered_pytorchjob_resumes_after_the_worker_is_killed(tmp_path, tiny_model, sevens, at_root):
    max_steps, save_steps = 12, 4
    config_map, job = render_multinode(tmp_path, tiny_model, sevens, max_steps=max_steps, save_steps=save_steps,
                                       save_total_limit=None)
    pods = Pods(tmp_path, config_map, job)
    out = pods.volume / "runs" / "sft-multinode"
    pods.start()
    try:
        deadline = time.monotonic() + 900
        while not (out / f"checkpoint-{save_steps}" / ".complete").exists():
            assert all(p.poll() is None for p in pods.procs.values()), pods.log("Master")[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 900 s"
            time.sleep(0.05)
        pods.kill("Worker")  # kill -9 of the Worker pod's process group, mid-run
        assert not (out / "final").exists(), "the run ended before the kill: raise max_steps"
        # The Master's training process loses its peer and fails, without hanging in a collective; its container
        # exits in restartPolicy ExitCode's retryable range (128-255), so the operator recreates the pod.
        master_code = pods.procs["Master"].wait(timeout=300)
        assert 128 <= master_code <= 255, master_code
        from rlvsdistill.paths import latest_complete_checkpoint

        resumed_from = latest_complete_checkpoint(out)
        step = int(resumed_from.name.split("-")[1])
        assert step < max_steps
        pods.start()  # both containers restarted with the same commands, as the kubelet/operator would
        codes = pods.wait(timeout=900)
    finally:
        pods.kill_all()
    assert codes == {"Master": 0, "Worker": 0}, pods.log("Master")[-3000:] + pods.log("Worker")[-3000:]
    master = pods.log("Master")
    assert f"resuming from {resumed_from}" in master
    assert len(re.findall(r"\{'loss':", master)) == max_steps - step  # only the remaining steps ran
    state = json.loads((out / f"checkpoint-{max_steps}" / "trainer_state.json").read_text())
    assert state["global_step"] == max_steps and (out / "final" / ".complete").is_file()
    assert len(_partition_sizes(out / f"checkpoint-{max_steps}")) == 2
    assert yaml.safe_load(config_map["data"]["config.yaml"])["max_steps"] == max_steps
