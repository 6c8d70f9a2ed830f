"""Render Kubernetes objects for a run from its job config and the cluster settings: dicts, then YAML.

GRPO: a batch/v1 Job on one node or a Kubeflow PyTorchJob on several; the trainer runs ``accelerate launch``
with ZeRO-3 and reaches a vLLM server that runs as a native sidecar (an init container with
``restartPolicy: Always``) on its own GPUs. SFT: the same without the sidecar. Evaluation: an Indexed Job (one
shard per pod) and a merge Job that waits for the shards. Every run also gets a ConfigMap holding its config.
Config values reach containers only as argument lists or that file, never through a shell.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

import yaml

from ..config import check_values, global_batch_problems, parse_overrides, read_yaml
from ..io import UserError
from .settings import DNS_LABEL, QUANTITY, ClusterSettings

KINDS = ("grpo", "sft", "generate", "eval")
CONFIG_DIR = "/etc/rlvsdistill"
CONFIG_FILE = f"{CONFIG_DIR}/config.yaml"
ACCELERATE_ZERO3 = "/app/configs/accelerate/zero3.yaml"  # inside the image
HF_CACHE = "/cache/huggingface"
RUN_LABEL = "rlvsdistill.io/run"
DOCKER_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}")
NAME_MAX = 52  # room for the "-config" / "-merge" suffixes and an indexed pod's "-NNN-xxxxx"


@dataclass(frozen=True)
class Run:
    """Everything a run's objects are rendered from."""

    kind: str
    name: str
    config_path: str
    config: dict  # the job config after overrides and the cluster's own keys
    settings: ClusterSettings
    image: str
    image_tag: str
    cluster_path: str | None = None  # where the settings came from (for the manifest header only)
    overrides: tuple[str, ...] = ()  # the KEY=VALUE overrides given (for the manifest header only)

    @property
    def config_hash(self) -> str:
        """12 hex digits over the config, the cluster settings and the image: the run's identity."""
        blob = json.dumps([self.kind, self.config, dataclasses.asdict(self.settings), self.image], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def default_name(kind: str, config_path: str) -> str:
    """``grpo`` + ``configs/paper/grpo_qwen2.5_3b.yaml`` -> ``grpo-qwen2-5-3b``."""
    stem = PurePosixPath(config_path).stem.lower()
    stem = re.sub(r"^(grpo|sft|generate|eval)[_-]", "", stem)
    slug = re.sub(r"[^a-z0-9]+", "-", stem).strip("-")
    return f"{kind}-{slug}"[:NAME_MAX].rstrip("-")


def _in_volume(path: str, settings: ClusterSettings) -> bool:
    return not path.startswith("/") or PurePosixPath(path).is_relative_to(settings.mount_path)


def prepare_run(kind: str, config_path: str, overrides: list[str], settings: ClusterSettings,
                image_tag: str | None, name: str | None = None, cluster_path: str | None = None) -> Run:
    """Check the job config, the name and the image tag; return the Run (UserError lists every problem)."""
    problems = []
    if kind not in KINDS:
        raise UserError(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
    values = read_yaml(config_path)
    values.update(parse_overrides(overrides))
    problems += [f"{config_path}: {p}" for p in check_values(kind, values, hardware=False)]
    if not image_tag:
        problems.append("--image-tag: required (every run names the image it runs; see `make image`)")
    elif not DOCKER_TAG.fullmatch(image_tag):
        problems.append(f"--image-tag: {image_tag!r} is not a valid image tag of at most 63 characters")
    name = name or default_name(kind, config_path)
    if len(name) > NAME_MAX or not DNS_LABEL.fullmatch(name):
        problems.append(f"--name: {name!r} is not a valid run name (lower case letters, digits and '-', "
                        f"starting and ending with a letter or digit, at most {NAME_MAX} characters)")
    for out_key in ("output_file", "output_dir"):
        if values.get(out_key) and not _in_volume(str(values[out_key]), settings):
            problems.append(f"{config_path}: {out_key}: {values[out_key]} is outside the volume "
                            f"({settings.mount_path}); the results would vanish with the pod")
    if kind == "grpo":
        problems += _grpo_cluster_problems(values, settings, config_path)
    if kind in ("grpo", "sft"):
        problems += [f"{config_path}: {p}" for p in global_batch_problems(values, training_processes(kind, settings))]
    if problems:
        raise UserError(f"cannot render {kind} run: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    if kind == "grpo" and settings.vllm_gpus:
        # The sidecar's address is the cluster's business: the trainer reaches it on localhost.
        values.update(use_vllm=True, vllm_mode="server", vllm_server_host="127.0.0.1",
                      vllm_server_port=settings.vllm_port)
    if kind in ("eval", "generate"):
        values.setdefault("merge_wait_seconds", settings.merge_wait_seconds)
    return Run(kind, name, config_path, values, settings, f"{settings.image_repository}:{image_tag}", image_tag,
               cluster_path, tuple(overrides))


def training_processes(kind: str, settings: ClusterSettings) -> int:
    """Training processes of a GRPO or SFT run: nodes x GPUs per node, less the vLLM sidecar's GPUs on each node."""
    if kind == "grpo":
        return settings.grpo_nodes * (settings.grpo_gpus_per_node - settings.vllm_gpus)
    return settings.sft_nodes * settings.sft_gpus_per_node


def _grpo_cluster_problems(values: dict, settings: ClusterSettings, where: str) -> list[str]:
    if settings.vllm_gpus and values.get("use_vllm") is False:
        return [f"{where}: use_vllm: false, but the cluster settings give vLLM {settings.vllm_gpus} GPU(s) "
                "(set vllm_gpus: 0 in the cluster settings, or use vLLM)"]
    if not settings.vllm_gpus and values.get("vllm_mode") == "server" and values.get("use_vllm"):
        return [f"{where}: vllm_mode: server needs a sidecar, but the cluster settings have vllm_gpus: 0"]
    return []


# ---------------------------------------------------------------------------------------------------------
# Pieces of a pod
# ---------------------------------------------------------------------------------------------------------


def _scale(quantity: str, factor: int) -> str:
    m = QUANTITY.match(quantity)
    number = float(m.group(0)[: len(m.group(0)) - len(m.group(2) or "")])
    value = number * factor
    return f"{int(value) if value.is_integer() else value}{m.group(2) or ''}"


def labels(run: Run) -> dict[str, str]:
    out = {
        "app.kubernetes.io/name": "rlvsdistill",
        "app.kubernetes.io/component": run.kind,
        RUN_LABEL: run.name,
        "rlvsdistill.io/config-hash": run.config_hash,
        "rlvsdistill.io/image-tag": run.image_tag,
    }
    if run.settings.queue:
        out["kueue.x-k8s.io/queue-name"] = run.settings.queue
    return out


def _metadata(run: Run, name: str) -> dict:
    return {"name": name, "namespace": run.settings.namespace, "labels": labels(run)}


def _env(run: Run) -> list[dict]:
    env = [
        {"name": "RLVSDISTILL_ROOT", "value": f"{run.settings.mount_path}/runs"},
        {"name": "RLVSDISTILL_RUN", "value": run.name},
        {"name": "IMAGE_TAG", "value": run.image_tag},
        {"name": "HF_HOME", "value": HF_CACHE},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if run.settings.hf_token_secret:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": run.settings.hf_token_secret,
                                                                        "key": "token"}}})
    if run.settings.wandb_secret:
        env.append({"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": run.settings.wandb_secret,
                                                                             "key": "api-key"}}})
    return env


def _resources(run: Run, gpus: int) -> dict:
    s = run.settings
    cpu = str(s.cpu_per_gpu * gpus) if gpus else "2"
    memory = _scale(s.memory_per_gpu, gpus) if gpus else "8Gi"
    requests = {"cpu": cpu, "memory": memory}
    limits = {"memory": memory}
    if gpus:
        requests[s.gpu_resource] = str(gpus)
        limits[s.gpu_resource] = str(gpus)
    return {"requests": requests, "limits": limits}


_MOUNTS = [
    {"name": "data", "mountPath": None},
    {"name": "dshm", "mountPath": "/dev/shm"},
    {"name": "hf-cache", "mountPath": HF_CACHE},
    {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
]


def container(run: Run, name: str, command: list[str], gpus: int) -> dict:
    """A container of the run's image running ``command`` (an argument list; no shell)."""
    mounts = [dict(m, mountPath=m["mountPath"] or run.settings.mount_path) for m in _MOUNTS]
    return {
        "name": name,
        "image": run.image,
        "imagePullPolicy": "IfNotPresent",
        "command": [str(c) for c in command],
        "env": _env(run),
        "resources": _resources(run, gpus),
        "volumeMounts": mounts,
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }


def vllm_sidecar(run: Run) -> dict:
    """The vLLM server as a native sidecar: started first, probed on /health, stopped when the trainer exits."""
    cfg, s = run.config, run.settings
    max_len = cfg.get("vllm_max_model_length") or cfg.get("max_prompt_tokens", 512) + cfg.get(
        "max_completion_length", 256)
    command = ["trl", "vllm-serve", "--model", cfg["model_name_or_path"], "--tensor_parallel_size", s.vllm_gpus,
               "--host", "0.0.0.0", "--port", s.vllm_port, "--gpu_memory_utilization", s.vllm_gpu_memory_utilization,
               "--max_model_len", max_len]
    if cfg.get("model_revision"):
        command += ["--revision", cfg["model_revision"]]
    side = container(run, "vllm", command, s.vllm_gpus)
    probe = {"httpGet": {"path": "/health", "port": s.vllm_port}, "periodSeconds": 10, "timeoutSeconds": 5}
    side["restartPolicy"] = "Always"
    side["ports"] = [{"name": "vllm", "containerPort": s.vllm_port}]
    side["startupProbe"] = {**probe, "failureThreshold": max(1, s.vllm_startup_seconds // 10)}
    side["readinessProbe"] = {**probe, "failureThreshold": 3}
    return side


def pod_template(run: Run, containers: list[dict], init_containers: list[dict] | None = None,
                 restart_policy: str | None = "Never") -> dict:
    s = run.settings
    spec = {
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": containers,
        "volumes": [
            {"name": "data", "persistentVolumeClaim": {"claimName": s.pvc}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": s.shm_size}},
            {"name": "hf-cache", "emptyDir": {"sizeLimit": s.hf_cache_size}},
            {"name": "config", "configMap": {"name": f"{run.name}-config"}},
        ],
    }
    if restart_policy:
        spec["restartPolicy"] = restart_policy
    if init_containers:
        spec["initContainers"] = init_containers
    if s.service_account:
        spec["serviceAccountName"] = s.service_account
    if s.priority_class:
        spec["priorityClassName"] = s.priority_class
    if s.node_selector:
        spec["nodeSelector"] = dict(s.node_selector)
    if s.tolerations:
        spec["tolerations"] = list(s.tolerations)
    return {"metadata": {"labels": labels(run)}, "spec": spec}


def _job(run: Run, name: str, template: dict, **spec) -> dict:
    s = run.settings
    body = {"backoffLimit": s.backoff_limit, **spec, "template": template}
    if s.ttl_seconds_after_finished is not None:
        body["ttlSecondsAfterFinished"] = s.ttl_seconds_after_finished
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": _metadata(run, name), "spec": body}


def config_map(run: Run) -> dict:
    text = yaml.safe_dump(run.config, sort_keys=False, allow_unicode=True)
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _metadata(run, f"{run.name}-config"),
            "data": {"config.yaml": text}}


# ---------------------------------------------------------------------------------------------------------
# Workloads
# ---------------------------------------------------------------------------------------------------------


def _launch(run: Run, procs_per_node: int, nodes: int) -> list:
    cmd = ["accelerate", "launch", "--config_file", ACCELERATE_ZERO3, "--num_processes", procs_per_node * nodes]
    if nodes > 1:
        # Set by the training operator in every PyTorchJob pod; Kubernetes substitutes $(VAR) from the env.
        cmd += ["--num_machines", nodes, "--machine_rank", "$(RANK)", "--main_process_ip", "$(MASTER_ADDR)",
                "--main_process_port", "$(MASTER_PORT)"]
    return cmd + ["-m", "rlvsdistill", run.kind, "--config", CONFIG_FILE]


def training_objects(run: Run) -> list[dict]:
    """GRPO or SFT: a Job on one node, a PyTorchJob on several (vLLM sidecar on the first node for GRPO)."""
    s = run.settings
    nodes, per_node = (s.grpo_nodes, s.grpo_gpus_per_node) if run.kind == "grpo" else (s.sft_nodes,
                                                                                        s.sft_gpus_per_node)
    vllm = s.vllm_gpus if run.kind == "grpo" else 0
    train_gpus = training_processes(run.kind, s) // nodes  # equal on every node: accelerate's process layout
    sidecars = [vllm_sidecar(run)] if vllm else None
    command = _launch(run, train_gpus, nodes)
    if nodes == 1:
        template = pod_template(run, [container(run, "trainer", command, train_gpus)], sidecars)
        return [config_map(run), _job(run, run.name, template)]
    replica = {"restartPolicy": "OnFailure"}
    # The training operator requires the training container to be called "pytorch".
    master = pod_template(run, [container(run, "pytorch", command, train_gpus)], sidecars, restart_policy=None)
    worker = pod_template(run, [container(run, "pytorch", command, train_gpus)], restart_policy=None)
    run_policy = {"backoffLimit": s.backoff_limit, "cleanPodPolicy": "None"}
    if s.ttl_seconds_after_finished is not None:
        run_policy["ttlSecondsAfterFinished"] = s.ttl_seconds_after_finished
    if s.queue:
        run_policy["schedulingPolicy"] = {"queue": s.queue}
    job = {
        "apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": _metadata(run, run.name),
        "spec": {
            "nprocPerNode": str(train_gpus),
            "runPolicy": run_policy,
            "pytorchReplicaSpecs": {
                "Master": {"replicas": 1, **replica, "template": master},
                "Worker": {"replicas": nodes - 1, **replica, "template": worker},
            },
        },
    }
    return [config_map(run), job]


def _sampling_gpus(cfg: dict) -> int:
    return cfg.get("tensor_parallel_size", 1) if cfg.get("backend", "auto") != "hf" else 0


def sharded_objects(run: Run) -> list[dict]:
    """Eval or teacher sampling: an Indexed Job running one shard per pod, and a merge Job that waits for every
    shard's marker (``eval-merge`` / ``generate-merge``)."""
    cfg, s = run.config, run.settings
    shards = cfg.get("num_shards", 1)
    gpus = _sampling_gpus(cfg)
    shard_pod = pod_template(run, [container(run, run.kind, ["rlvsdistill", run.kind, "--config", CONFIG_FILE],
                                             gpus)])
    shards_job = _job(run, run.name, shard_pod, completionMode="Indexed", completions=shards,
                      parallelism=min(s.eval_parallelism, shards), backoffLimitPerIndex=s.backoff_limit)
    del shards_job["spec"]["backoffLimit"]  # per index instead: a failing shard does not use up the others' retries
    merge_pod = pod_template(run, [container(run, "merge", ["rlvsdistill", f"{run.kind}-merge", "--config",
                                                            CONFIG_FILE], 0)])
    return [config_map(run), shards_job, _job(run, f"{run.name}-merge", merge_pod)]


def render_objects(run: Run) -> list[dict]:
    """The run's objects, in the order they are created."""
    if run.kind in ("eval", "generate"):
        return sharded_objects(run)
    return training_objects(run)


class _LiteralDumper(yaml.SafeDumper):
    """Multi-line strings (the ConfigMap's config file) as readable literal blocks."""


def _str_representer(dumper, value: str):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _str_representer)


def to_yaml(run: Run, objects: list[dict]) -> str:
    """Deterministic multi-document YAML, opening with how to apply, check, follow and clean up the run."""
    ns, sel = run.settings.namespace, f"{RUN_LABEL}={run.name}"
    kinds = "jobs,pytorchjobs,configmaps" if any(o["kind"] == "PyTorchJob" for o in objects) else "jobs,configmaps"
    container_name = "pytorch" if any(o["kind"] == "PyTorchJob" for o in objects) else (
        run.kind if run.kind in ("eval", "generate") else "trainer")
    cluster = f" --cluster {run.cluster_path}" if run.cluster_path else ""
    cluster += "".join(f" {o}" for o in run.overrides)
    header = [
        f"# rlvsdistill {run.kind} run '{run.name}' from {run.config_path}, image {run.image} "
        f"(config hash {run.config_hash})",
        f"# Apply:  rlvsdistill submit {run.kind} --config {run.config_path}{cluster} --image-tag {run.image_tag}"
        "   (or: kubectl apply -f THIS_FILE)",
        f"# Check:  kubectl -n {ns} get {kinds.replace(',configmaps', '')},pods -l {sel}",
        f"# Logs:   kubectl -n {ns} logs -f -l {sel} -c {container_name} --max-log-requests 16",
        f"# Clean:  kubectl -n {ns} delete {kinds} -l {sel}",
    ]
    docs = [yaml.dump(o, Dumper=_LiteralDumper, sort_keys=False, default_flow_style=False, width=120)
            for o in objects]
    return "\n".join(header) + "\n---\n" + "---\n".join(docs)
