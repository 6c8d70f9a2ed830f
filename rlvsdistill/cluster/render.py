"""Render Kubernetes objects for a run from its job config and the cluster settings: dicts, then YAML.

GRPO: a batch/v1 Job on one node or a Kubeflow PyTorchJob on several; the trainer runs ``accelerate launch``
with ZeRO-3 and reaches a vLLM server that runs as a native sidecar (an init container with
``restartPolicy: Always``) on its own GPUs. SFT: the same without the sidecar. Evaluation: an Indexed Job (one
shard per pod) and, with several shards, a merge Job that tracks the shards Job. Smoke: one Job of `rlvsdistill
smoke` steps with the sidecar. Every run also gets a ConfigMap holding its config (owned by the workload once
created) and a NetworkPolicy that admits only the run's own pods, and every container the run's image reference.
Config values reach containers only as argument lists or that file, never through a shell; ``$`` is escaped so
Kubernetes does not expand ``$(VAR)`` in them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

import yaml

from ..config import check_values, global_batch_problems, parse_overrides, read_yaml
from ..grading import CPU_REQUEST_ENV
from ..io import UserError
from ..paths import CONFIG_HASH_ENV, RESUME_ANYWAY_ENV
from .image import ImageRef, parse_image
from .jobwatch import SERVICEACCOUNT_DIR, SHARDS_JOB_ENV
from .settings import DNS_LABEL, QUANTITY, ClusterSettings

KINDS = ("grpo", "sft", "generate", "eval", "smoke")
CONFIG_DIR = "/etc/rlvsdistill"
CONFIG_FILE = f"{CONFIG_DIR}/config.yaml"
ACCELERATE_ZERO3 = "/app/configs/accelerate/zero3.yaml"  # inside the image
CACHE_DIR = "/cache"  # the image points HF_HOME, TRITON_CACHE_DIR, XDG_CACHE_HOME, ... below it
HF_CACHE = f"{CACHE_DIR}/huggingface"
MODEL_CACHE = "/models"  # where the optional model-cache PVC is mounted: hub/ (models) and datasets/
RUN_LABEL = "rlvsdistill.io/run"
# Ports the run's pods serve to each other: vLLM's HTTP API (`trl vllm-serve --port`) and the weight-sync
# process group (`--group_port` / GRPOConfig.vllm_group_port); NCCL and torch rendezvous add ephemeral ports.
VLLM_GROUP_PORT = 51216
# Whole arguments that are deliberate Kubernetes $(VAR) references: set by the training operator in every
# PyTorchJob pod, or by the Job controller. Any other '$' is escaped as '$$'.
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "PET_NNODES", "PET_NODE_RANK",
                 "PET_MASTER_ADDR", "PET_MASTER_PORT", "PET_NPROC_PER_NODE", "JOB_COMPLETION_INDEX")
DEEPSPEED_ZERO3 = "/app/configs/deepspeed/zero3.json"  # absolute: the accelerate config names it relative to /app
WORKDIR = "/tmp"  # writable for uid 1000 (/app is read-only): launchers and libraries write into the cwd
NAME_MAX = 52  # room for the "-config" / "-merge" suffixes and an indexed pod's "-NNN-xxxxx"


@dataclass(frozen=True)
class Run:
    """Everything a run's objects are rendered from."""

    kind: str
    name: str
    config_path: str | None  # None for the smoke test, whose config is rendered from the cluster settings
    config: dict  # the job config after overrides and the cluster's own keys
    settings: ClusterSettings
    image: ImageRef
    cluster_path: str | None = None  # where the settings came from (for the manifest header only)
    resume_anyway: bool = False  # resume checkpoints on the volume even if they come from another config hash
    prefetch: bool = False  # the run is the download of the config's model into the model-cache PVC
    overrides: tuple[str, ...] = ()  # the KEY=VALUE overrides given (for the manifest header only)

    @property
    def config_hash(self) -> str:
        """12 hex digits over the config and the cluster settings: the run's identity (the image is labelled
        apart, so a fixed image may resume the same run). Stored in run_record.json; a differing hash refuses
        to resume."""
        blob = json.dumps([self.kind, self.config, dataclasses.asdict(self.settings)], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def image_tag(self) -> str | None:
        return self.image.tag


def default_name(kind: str, config_path: str) -> str:
    """``grpo`` + ``configs/paper/grpo_qwen2.5_3b.yaml`` -> ``grpo-qwen2-5-3b``."""
    stem = PurePosixPath(config_path).stem.lower()
    stem = re.sub(r"^(grpo|sft|generate|eval)[_-]", "", stem)
    slug = re.sub(r"[^a-z0-9]+", "-", stem).strip("-")
    return f"{kind}-{slug}"[:NAME_MAX].rstrip("-")


def _in_volume(path: str, settings: ClusterSettings) -> bool:
    return not path.startswith("/") or PurePosixPath(path).is_relative_to(settings.mount_path)


def prepare_run(kind: str, config_path: str, overrides: list[str], settings: ClusterSettings,
                image: ImageRef | str, name: str | None = None, cluster_path: str | None = None,
                resume_anyway: bool = False, prefetch: bool = False) -> Run:
    """Check the job config, the name and the image (an ImageRef, or a reference that must name its registry);
    return the Run (UserError lists every problem)."""
    problems = []
    if kind not in KINDS:
        raise UserError(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
    if kind == "smoke":
        name = name or "smoke"
        values = smoke_config(name, settings, parse_overrides(overrides))
    else:
        values = read_yaml(config_path)
        values.update(parse_overrides(overrides))
        problems += [f"{config_path}: {p}" for p in check_values(kind, values, hardware=False)]
    if isinstance(image, str):
        try:
            image = parse_image(image)
        except UserError as exc:
            problems.append(str(exc))
    name = name or (f"prefetch-{default_name(kind, config_path)}"[:NAME_MAX].rstrip("-") if prefetch
                    else default_name(kind, config_path))
    if prefetch and not settings.model_cache_pvc:
        problems.append("--prefetch-model: the cluster settings have no model_cache_pvc to download into")
    if len(name) > NAME_MAX or not DNS_LABEL.fullmatch(name):
        problems.append(f"--name: {name!r} is not a valid run name (lower case letters, digits and '-', "
                        f"starting and ending with a letter or digit, at most {NAME_MAX} characters)")
    for out_key in ("output_file", "output_dir"):
        if values.get(out_key) and not _in_volume(str(values[out_key]), settings):
            problems.append(f"{config_path}: {out_key}: {values[out_key]} is outside the volume "
                            f"({settings.mount_path}); the results would vanish with the pod")
    if kind == "grpo":
        problems += _grpo_cluster_problems(values, settings, config_path)
    report_to = values.get("report_to") or []
    if "wandb" in ([report_to] if isinstance(report_to, str) else report_to) and not settings.wandb_secret:
        problems.append(f"{config_path}: report_to: wandb, but the cluster settings name no wandb_secret (a Secret "
                        "with key api-key); set one, or report_to: tensorboard (event files under output_dir)")
    if kind in ("grpo", "sft") and not prefetch:  # a prefetch only downloads the model
        problems += [f"{config_path}: {p}" for p in global_batch_problems(values, training_processes(kind, settings))]
    if problems:
        raise UserError(f"cannot render {kind} run: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    if kind == "grpo" and settings.vllm_gpus:
        # The sidecar's address is the cluster's business: the trainer reaches it on localhost.
        values.update(use_vllm=True, vllm_mode="server", vllm_server_host="127.0.0.1",
                      vllm_server_port=settings.vllm_port, vllm_server_timeout=settings.vllm_startup_seconds)
    if kind in ("eval", "generate"):
        values.setdefault("merge_wait_seconds", settings.merge_wait_seconds)
    return Run(kind, name, config_path, values, settings, image, cluster_path, resume_anyway, prefetch,
               tuple(overrides))


def smoke_config(name: str, settings: ClusterSettings, overrides: dict) -> dict:
    """The smoke Job's options: the tiny model on the volume (the sidecar serves it), the sidecar on localhost."""
    from ..smoke import load_options

    values = {"output_dir": name, "max_steps": 3, "model_name_or_path": f"{settings.mount_path}/runs/{name}/model",
              "vllm_server_host": "127.0.0.1", "vllm_server_port": settings.vllm_port, **overrides}
    return dataclasses.asdict(load_options(None, **values))


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
    ready = settings.kueue_pods_ready_timeout_seconds
    if settings.queue and settings.vllm_gpus and ready is not None and settings.vllm_startup_seconds > ready:
        return [f"vllm_startup_seconds: {settings.vllm_startup_seconds} exceeds kueue_pods_ready_timeout_seconds: "
                f"{ready} (Kueue's waitForPodsReady.timeout): Kueue would evict the run while vLLM loads. Raise "
                "waitForPodsReady.timeout in Kueue's configuration (and this setting with it), or lower "
                "vllm_startup_seconds"]
    return []


# ---------------------------------------------------------------------------------------------------------
# Pieces of a pod
# ---------------------------------------------------------------------------------------------------------


def _scale(quantity: str, factor: int) -> str:
    m = QUANTITY.match(quantity)
    number = float(m.group(0)[: len(m.group(0)) - len(m.group(2) or "")])
    value = number * factor
    return f"{int(value) if value.is_integer() else value}{m.group(2) or ''}"


TMP_SIZE = "8Gi"
_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def _add_quantities(*quantities: str) -> str:
    """The sum of byte quantities, in whole Gi (rounded up)."""
    total = 0.0
    for q in quantities:
        m = QUANTITY.match(q)
        total += float(q[: len(q) - len(m.group(2) or "")]) * _UNITS[m.group(2) or ""]
    return f"{math.ceil(total / 2**30)}Gi"


def labels(run: Run) -> dict[str, str]:
    out = {
        "app.kubernetes.io/name": "rlvsdistill",
        "app.kubernetes.io/component": run.kind,
        RUN_LABEL: run.name,
        "rlvsdistill.io/config-hash": run.config_hash,
    }
    if run.image_tag:
        out["rlvsdistill.io/image-tag"] = run.image_tag
    if run.settings.queue:
        out["kueue.x-k8s.io/queue-name"] = run.settings.queue
    return out


def annotations(run: Run) -> dict[str, str]:
    """The whole image reference, and its digest when given: a run traced to image bytes, not a movable tag."""
    out = {"rlvsdistill.io/image": str(run.image)}
    if run.image.digest:
        out["rlvsdistill.io/image-digest"] = run.image.digest
    return out


def _metadata(run: Run, name: str) -> dict:
    return {"name": name, "namespace": run.settings.namespace, "labels": labels(run), "annotations": annotations(run)}


def _env(run: Run, secrets: tuple[str, ...]) -> list[dict]:
    """The container's environment; ``secrets`` names the ones it needs: "hf" (downloads), "wandb" (trainers)."""
    env = [
        {"name": "RLVSDISTILL_ROOT", "value": f"{run.settings.mount_path}/runs"},
        {"name": "RLVSDISTILL_RUN", "value": run.name},
        {"name": "IMAGE_TAG", "value": run.image_tag or run.image.digest},
        {"name": "RLVSDISTILL_IMAGE", "value": str(run.image)},
        {"name": CONFIG_HASH_ENV, "value": run.config_hash},
        {"name": "HF_HOME", "value": HF_CACHE},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        # Library progress bars (model loading, downloads) write '\r' lines that `kubectl logs` shows as one
        # unreadable line; our own progress logs a line every few seconds when there is no terminal.
        {"name": "TQDM_DISABLE", "value": "1"},
        {"name": "HF_HUB_DISABLE_PROGRESS_BARS", "value": "1"},
        # The container's CPU request (whole CPUs, rounded up): grading.default_workers() sizes its pools by it.
        {"name": CPU_REQUEST_ENV, "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1"}}},
    ]
    if run.resume_anyway:
        env.append({"name": RESUME_ANYWAY_ENV, "value": "1"})
    if run.settings.model_cache_pvc:  # the model and dataset were prefetched into the PVC: no download
        env += [{"name": "HF_HUB_CACHE", "value": f"{MODEL_CACHE}/hub"},
                {"name": "HF_DATASETS_CACHE", "value": f"{MODEL_CACHE}/datasets"},
                {"name": "HF_HUB_OFFLINE", "value": "1"}]
    # Optional: a pod never waits for a Secret that is missing (public models need no token).
    if run.settings.hf_token_secret and "hf" in secrets:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": run.settings.hf_token_secret, "key": "token", "optional": True}}})
    if run.settings.wandb_secret and "wandb" in secrets:
        env.append({"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {
            "name": run.settings.wandb_secret, "key": "api-key", "optional": True}}})
        # wandb writes its run files, cache and settings under $HOME by default; the working directory is writable.
        env += [{"name": "WANDB_DIR", "value": WORKDIR}, {"name": "WANDB_CACHE_DIR", "value": f"{WORKDIR}/wandb-cache"},
                {"name": "WANDB_CONFIG_DIR", "value": f"{WORKDIR}/wandb-config"}]
    return env


def _resources(run: Run, gpus: int) -> dict:
    s = run.settings
    cpu = str(s.cpu_per_gpu * gpus) if gpus else str(s.cpu_pod_cpu)
    memory = _scale(s.memory_per_gpu, gpus) if gpus else s.cpu_pod_memory
    requests = {"cpu": cpu, "memory": memory}
    limits = {"memory": memory}
    if gpus:
        requests[s.gpu_resource] = str(gpus)
        limits[s.gpu_resource] = str(gpus)
    return {"requests": requests, "limits": limits}


_MOUNTS = [
    {"name": "data", "mountPath": None},
    {"name": "dshm", "mountPath": "/dev/shm"},
    {"name": "cache", "mountPath": CACHE_DIR},
    {"name": "tmp", "mountPath": "/tmp"},
    {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
]
_LAUNCHER_REFS = {f"$({v})" for v in LAUNCHER_VARS}


def escape_dollars(arg) -> str:
    """``$`` as ``$$``, so Kubernetes passes it through; a whole-argument launcher ref (``$(RANK)``) stays."""
    arg = str(arg)
    return arg if arg in _LAUNCHER_REFS else arg.replace("$", "$$")


def container(run: Run, name: str, command: list[str], gpus: int, secrets: tuple[str, ...] = ("hf",)) -> dict:
    """A container of the run's image running ``command`` (an argument list; no shell)."""
    mounts = [dict(m, mountPath=m["mountPath"] or run.settings.mount_path) for m in _MOUNTS]
    if run.settings.model_cache_pvc:
        # Read-write: `datasets` takes file locks beside its cache even to read it.
        mounts.append({"name": "model-cache", "mountPath": MODEL_CACHE})
    env = [dict(e, value=escape_dollars(e["value"])) if "value" in e else e for e in _env(run, secrets)]
    if not gpus:
        env.append({"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"})  # the base image says "all"
    return {
        "name": name,
        "image": str(run.image),
        "imagePullPolicy": run.image.pull_policy,
        "command": [escape_dollars(c) for c in command],
        "workingDir": WORKDIR,
        "env": env,
        "resources": _resources(run, gpus),
        "volumeMounts": mounts,
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }


def nccl_host_env(role: str) -> list[dict]:
    """A host id of its own for each container of a pod holding the vLLM sidecar. The trainer and the sidecar share
    the pod's hostname and the node's boot_id, from which NCCL derives its host hash, so NCCL would take them for
    one host and try P2P / shared memory / NVML lookups on GPUs the other container cannot see (NVIDIA/nccl#1529);
    a distinct NCCL_HOSTID (the pod's uid plus the container) makes the weight-sync group use the network transport.
    See docs/cluster.md, "Weight sync between the trainer and the sidecar"."""
    return [{"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
            {"name": "NCCL_HOSTID", "value": f"$(POD_UID)-{role}"}]


def vllm_sidecar(run: Run) -> dict:
    """The vLLM server as a native sidecar, stopped when the trainer exits. It has no startup probe: the kubelet
    would hold the trainer back until it passed, for ever if vLLM never came up. The trainer waits for /health
    instead (``vllm_server_timeout`` = ``vllm_startup_seconds``) and fails the pod when that runs out; the readiness
    probe makes the pod Ready (what Kueue's waitForPodsReady watches) once the model is loaded."""
    cfg, s = run.config, run.settings
    max_len = cfg.get("vllm_max_model_length") or cfg.get("max_prompt_tokens", 512) + cfg.get(
        "max_completion_length", 256)
    command = ["trl", "vllm-serve", "--model", cfg["model_name_or_path"], "--tensor_parallel_size", s.vllm_gpus,
               "--host", "0.0.0.0", "--port", s.vllm_port, "--gpu_memory_utilization", s.vllm_gpu_memory_utilization,
               "--max_model_len", max_len]
    if cfg.get("model_revision"):
        command += ["--revision", cfg["model_revision"]]
    side = container(run, "vllm", command, s.vllm_gpus)
    side["env"] += nccl_host_env("vllm")
    probe = {"httpGet": {"path": "/health", "port": s.vllm_port}, "periodSeconds": 10, "timeoutSeconds": 5}
    side["restartPolicy"] = "Always"
    side["ports"] = [{"name": "vllm", "containerPort": s.vllm_port}]  # the trainer listens on VLLM_GROUP_PORT
    side["readinessProbe"] = {**probe, "failureThreshold": 3}
    return side


def pod_template(run: Run, containers: list[dict], init_containers: list[dict] | None = None,
                 restart_policy: str | None = "Never") -> dict:
    s = run.settings
    spec = {
        # No API token in the pods: nothing in them talks to the API server (the merge Job mounts its own).
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
                            "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": containers,
        "volumes": [
            {"name": "data", "persistentVolumeClaim": {"claimName": s.pvc}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": s.shm_size}},
            {"name": "cache", "emptyDir": {"sizeLimit": s.hf_cache_size}},
            {"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE}},
            {"name": "config", "configMap": {"name": f"{run.name}-config"}},
        ],
    }
    # The node-local disk the pod's emptyDirs may fill (the model download in /cache above all), requested by its
    # main container so the scheduler places it where that much is free, instead of the kubelet evicting it later.
    containers[0]["resources"]["requests"]["ephemeral-storage"] = _add_quantities(s.hf_cache_size, TMP_SIZE)
    if s.model_cache_pvc:
        spec["volumes"].append({"name": "model-cache", "persistentVolumeClaim": {"claimName": s.model_cache_pvc}})
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
    if s.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": n} for n in s.image_pull_secrets]
    return {"metadata": {"labels": labels(run), "annotations": annotations(run)}, "spec": spec}


def _job(run: Run, name: str, template: dict, **spec) -> dict:
    s = run.settings
    # Failed: a retry starts only once the pod it replaces has ended, never beside one still terminating (a
    # deleted or evicted pod within its grace period), which would write the same checkpoints or shard files.
    body = {"backoffLimit": s.backoff_limit, "activeDeadlineSeconds": s.active_deadline_seconds,
            "podReplacementPolicy": "Failed", **spec, "template": template}
    if s.ttl_seconds_after_finished is not None:
        body["ttlSecondsAfterFinished"] = s.ttl_seconds_after_finished
    if s.queue:
        body["suspend"] = True  # Kueue admits (unsuspends) it when the queue has quota
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": _metadata(run, name), "spec": body}


def config_map(run: Run) -> dict:
    text = yaml.safe_dump(run.config, sort_keys=False, allow_unicode=True)
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _metadata(run, f"{run.name}-config"),
            "data": {"config.yaml": text}}


def network_policy(run: Run) -> dict:
    """Ingress to the run's pods only from the run's own pods: the vLLM API and weight-sync ports, NCCL and the
    torch rendezvous between nodes (ephemeral ports, hence no port list); nothing else in the cluster."""
    own = {"podSelector": {"matchLabels": {RUN_LABEL: run.name}}}
    meta = _metadata(run, f"{run.name}-ingress")
    if (run.kind == "grpo" and run.settings.vllm_gpus) or (run.kind == "smoke" and not run.prefetch):
        # In TRL 1.16 the trainer is rank 0 of the weight-sync group: it listens, and vLLM's workers connect.
        meta["annotations"]["rlvsdistill.io/serves"] = (f"vllm-sidecar:{run.settings.vllm_port},"
                                                        f"trainer-weight-sync:{VLLM_GROUP_PORT}")
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta,
            "spec": {**own, "policyTypes": ["Ingress"], "ingress": [{"from": [own]}]}}


# ---------------------------------------------------------------------------------------------------------
# Workloads
# ---------------------------------------------------------------------------------------------------------


def _launch(run: Run, procs_per_node: int, nodes: int) -> list:
    # Several nodes: a PyTorchJob with restartPolicy ExitCode; `rlvsdistill launch` makes a failure that is not a
    # config error (a lost peer, above all) exit 143, so the operator recreates the pod and the run resumes.
    # Its --max-attempts bounds the retries the operator would repeat for ever (see rlvsdistill/launch.py).
    cmd = ["rlvsdistill", "launch", "--max-attempts", run.settings.backoff_limit + 1, "--output-dir",
           str(run.config.get("output_dir") or run.name), "--"] if nodes > 1 else []
    cmd += ["accelerate", "launch", "--config_file", ACCELERATE_ZERO3, "--deepspeed_config_file", DEEPSPEED_ZERO3,
           "--num_processes", procs_per_node * nodes]
    if nodes > 1:
        # Set by the training operator in every PyTorchJob pod; Kubernetes substitutes $(VAR) from the env.
        # "standard": each pod runs torch.distributed.run for its own processes (the default, pdsh, would ssh).
        cmd += ["--num_machines", nodes, "--machine_rank", "$(RANK)", "--main_process_ip", "$(MASTER_ADDR)",
                "--main_process_port", "$(MASTER_PORT)", "--deepspeed_multinode_launcher", "standard"]
    return cmd + ["-m", "rlvsdistill", run.kind, "--config", CONFIG_FILE]


def weight_sync_port(trainer: dict) -> dict:
    """The trainer's side of TRL's weight-sync group (it listens; the vLLM sidecar's workers connect)."""
    trainer["ports"] = [{"name": "weight-sync", "containerPort": VLLM_GROUP_PORT}]
    return trainer


def fabric(run: Run, template: dict) -> dict:
    """A training pod with the cluster's fabric settings: extra resources (EFA, InfiniBand, TCPX devices) and env
    on its training container, annotations on the pod (e.g. a Multus network). Without them NCCL uses TCP."""
    s = run.settings
    trainer = template["spec"]["containers"][0]
    for name, amount in s.fabric_resources.items():
        trainer["resources"]["requests"][name] = trainer["resources"]["limits"][name] = str(amount)
    trainer["env"] += [{"name": k, "value": escape_dollars(v)} for k, v in s.fabric_env.items()]
    template["metadata"]["annotations"].update(s.fabric_annotations)
    return template


def training_objects(run: Run) -> list[dict]:
    """GRPO or SFT: a Job on one node, a PyTorchJob on several (vLLM sidecar on the first node for GRPO)."""
    s = run.settings
    nodes, per_node = (s.grpo_nodes, s.grpo_gpus_per_node) if run.kind == "grpo" else (s.sft_nodes,
                                                                                        s.sft_gpus_per_node)
    vllm = s.vllm_gpus if run.kind == "grpo" else 0
    train_gpus = training_processes(run.kind, s) // nodes  # equal on every node: accelerate's process layout
    sidecars = [vllm_sidecar(run)] if vllm else None
    if sidecars and nodes > 1:
        # No readiness probe on the Master's sidecar: the operator's Master Service is headless, so MASTER_ADDR
        # resolves only once the Master pod is Ready, and a probed sidecar would make the Workers' init-pytorch
        # (about 200 s) and the rendezvous (600 s) wait for the model to load. The trainer waits for /health.
        del sidecars[0]["readinessProbe"]
    command = _launch(run, train_gpus, nodes)
    secrets = ("hf", "wandb")
    def trainer(name: str) -> dict:
        c = container(run, name, command, train_gpus, secrets)
        if vllm:
            c["env"] += nccl_host_env("trainer")
            c = weight_sync_port(c)
        return c

    if nodes == 1:
        template = fabric(run, pod_template(run, [trainer("trainer")], sidecars))
        return [config_map(run), network_policy(run), _job(run, run.name, template)]
    # ExitCode: a failed pod is recreated whole (never the trainer alone beside a sidecar that still holds the
    # dead trainer's weight-sync group); 137/143 (killed) count as retryable, 1 as permanent.
    replica = {"restartPolicy": "ExitCode"}
    # The training operator requires the training container to be called "pytorch".
    master = fabric(run, pod_template(run, [trainer("pytorch")], sidecars, restart_policy=None))
    worker = fabric(run, pod_template(run, [container(run, "pytorch", command, train_gpus, secrets)],
                                      restart_policy=None))
    # Running: when the job ends, pods still running (hung peers holding GPUs) are deleted at once.
    run_policy = {"backoffLimit": s.backoff_limit, "activeDeadlineSeconds": s.active_deadline_seconds,
                  "cleanPodPolicy": "Running"}
    if s.ttl_seconds_after_finished is not None:
        run_policy["ttlSecondsAfterFinished"] = s.ttl_seconds_after_finished
    if s.queue:
        run_policy["suspend"] = True  # Kueue reads the queue-name label and unsuspends on admission
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
    return [config_map(run), network_policy(run), job]


def _sampling_gpus(cfg: dict) -> int:
    return cfg.get("tensor_parallel_size", 1) if cfg.get("backend", "auto") != "hf" else 0


def _merge_pod(run: Run) -> dict:
    """The merge: CPU only, no secrets, and an API token of a service account that may read Jobs (k8s/rbac.yaml),
    to follow the shards Job."""
    merge = container(run, "merge", ["rlvsdistill", f"{run.kind}-merge", "--config", CONFIG_FILE], 0, secrets=())
    merge["resources"]["requests"]["memory"] = merge["resources"]["limits"]["memory"] = merge_memory(run.config)
    merge["env"] += [{"name": SHARDS_JOB_ENV, "value": run.name}]
    return _api_pod(run, merge, run.settings.merge_service_account)


def _api_pod(run: Run, main: dict, account: str) -> dict:
    """A pod of ``main`` with an API token (projected, read-only, 1 h, renewed by the kubelet) of ``account``: the
    only pods of this project that talk to the API server (the merge, the study Job)."""
    main["volumeMounts"].append({"name": "api-token", "mountPath": SERVICEACCOUNT_DIR, "readOnly": True})
    pod = pod_template(run, [main])
    pod["spec"]["serviceAccountName"] = account
    pod["spec"]["volumes"].append({"name": "api-token", "projected": {"sources": [
        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
    ]}})
    return pod


# The streaming eval-merge's memory (measured by tests/benchmarks/bench_scale.py): the interpreter with what the
# CLI imports (torch, TRL, datasets: ~450 MiB), one ProblemStats per problem (~3 KiB), and one problem's n
# responses held a few times over (raw line, parsed record, Sample). Rounded up, with headroom on each term.
MERGE_BASE_MIB = 768
MERGE_KIB_PER_PROBLEM = 16
DATASET_PROBLEMS = {"math_train": 7500, "math500": 500}
UNKNOWN_DATASET_PROBLEMS = 12_500  # a local file's size is unknown when rendering: all of MATH


def merge_memory(cfg: dict) -> str:
    """The merge pod's memory request and limit for an eval or generate config: it grows with problems, not samples."""
    problems = cfg.get("max_problems") or DATASET_PROBLEMS.get(cfg.get("dataset_name"), UNKNOWN_DATASET_PROBLEMS)
    group_bytes = 4 * cfg.get("n", 1) * cfg.get("max_tokens", 1024) * 4  # ~4 bytes a token, held ~4 times
    mib = MERGE_BASE_MIB + problems * MERGE_KIB_PER_PROBLEM / 1024 + group_bytes / 2**20
    return f"{math.ceil(mib / 256) * 256}Mi"


def sharded_objects(run: Run) -> list[dict]:
    """Eval or teacher sampling: an Indexed Job running one shard per pod and, with several shards, a merge Job
    that follows it (``eval-merge`` / ``generate-merge``; a single shard merges in its own pod). A generate config
    with ``teacher_samples`` only filters: one CPU Job."""
    cfg, s = run.config, run.settings
    if cfg.get("teacher_samples"):  # a filter of another run's samples: one CPU pod, no shards
        filter_pod = pod_template(run, [container(run, run.kind, ["rlvsdistill", run.kind, "--config", CONFIG_FILE],
                                                  0)])
        return [config_map(run), network_policy(run), _job(run, run.name, filter_pod)]
    shards = cfg.get("num_shards", 1)
    gpus = _sampling_gpus(cfg)
    shard_pod = pod_template(run, [container(run, run.kind, ["rlvsdistill", run.kind, "--config", CONFIG_FILE],
                                             gpus)])
    shards_job = _job(run, run.name, shard_pod, completionMode="Indexed", completions=shards,
                      parallelism=min(s.eval_parallelism, shards), backoffLimitPerIndex=s.backoff_limit)
    del shards_job["spec"]["backoffLimit"]  # per index instead: a failing shard does not use up the others' retries
    objects = [config_map(run), network_policy(run), shards_job]
    if shards > 1:
        # backoffLimit 0: the merge runs once; it fails only on a verdict (a failed shard, a deadline, bad data).
        objects.append(_job(run, f"{run.name}-merge", _merge_pod(run), backoffLimit=0))
    return objects


def prefetch_objects(run: Run) -> list[dict]:
    """A CPU Job that downloads the config's model (at its revision) and Hub dataset into the model-cache PVC,
    once, so that every pod, retry and shard of the runs reads them offline instead of downloading again."""
    fetch = container(run, "prefetch", ["python", "-m", "rlvsdistill.prefetch", CONFIG_FILE], 0)
    fetch["env"] = [e for e in fetch["env"] if e["name"] != "HF_HUB_OFFLINE"]
    return [config_map(run), network_policy(run), _job(run, run.name, pod_template(run, [fetch]))]


SMOKE_INIT_STEPS, SMOKE_STEPS = ["tiny-model"], ["grpo-vllm-server", "eval"]
SMOKE_DEADLINE_SECONDS = 3600


def smoke_objects(run: Run) -> list[dict]:
    """`rlvsdistill smoke` as a Job: the tiny model is written by an init container, served by the vLLM sidecar on
    1 GPU, trained on for a few GRPO steps on 1 GPU (weights synced to the server), then evaluated; no retries."""
    def smoke(name: str, steps: list[str], gpus: int) -> dict:
        return container(run, name, ["rlvsdistill", "smoke", "--config", CONFIG_FILE, "--steps", ",".join(steps)],
                         gpus)

    one_gpu_server = dataclasses.replace(run, settings=dataclasses.replace(run.settings, vllm_gpus=1))
    trainer = smoke("smoke", SMOKE_STEPS, 1)
    trainer["env"] += nccl_host_env("trainer")
    template = pod_template(run, [weight_sync_port(trainer)],
                            [smoke("tiny-model", SMOKE_INIT_STEPS, 0), vllm_sidecar(one_gpu_server)])
    # A deadline: whatever hangs (a model vLLM cannot load, a GPU that never frees), the Job fails within the hour.
    return [config_map(run), network_policy(run),
            _job(run, run.name, template, backoffLimit=0, activeDeadlineSeconds=SMOKE_DEADLINE_SECONDS)]


STUDY_ACCOUNT = "rlvsdistill-study"  # k8s/rbac.yaml: the submitter's Role, bound to the study Job's account


def study_run(study_path: str, root: str, settings: ClusterSettings, image: ImageRef, name: str,
              cluster_path: str | None = None) -> Run:
    """The in-cluster study Job: `rlvsdistill study submit --wait` from a small CPU pod, with the study file as it
    is in the image and the cluster settings in its ConfigMap. Refused for a study file outside the repository."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    path = Path(study_path).resolve()
    if not path.is_relative_to(repo):
        raise UserError(f"--in-cluster: {study_path} is not in the image (only files under {repo} are, at /app)")
    if len(name) > NAME_MAX or not DNS_LABEL.fullmatch(name):
        raise UserError(f"--in-cluster: {name!r} is not a valid run name")
    config = {"study": f"/app/{path.relative_to(repo).as_posix()}", "root": root,
              "settings": dataclasses.asdict(settings)}
    return Run("study", name, study_path, config, settings, image, cluster_path)


def study_objects(run: Run) -> list[dict]:
    """The study Job: CPU only, no secrets, the volume mounted (completion markers), retried like any Job (the
    submission is idempotent); its ConfigMap is the cluster settings file it reads."""
    command = ["rlvsdistill", "study", "submit", run.config["study"], "--cluster", CONFIG_FILE, "--image",
               str(run.image), *(["--local-image"] if run.image.local else []), "--root", run.config["root"],
               "--volume", run.config["root"], "--wait"]
    main = container(run, "study", command, 0, secrets=())
    cm = config_map(dataclasses.replace(run, config=run.config["settings"]))
    return [cm, network_policy(run), _job(run, run.name, _api_pod(run, main, STUDY_ACCOUNT))]


def render_objects(run: Run) -> list[dict]:
    """The run's objects, in the order they are created."""
    if run.kind == "study":
        return study_objects(run)
    if run.prefetch:
        return prefetch_objects(run)
    if run.kind == "smoke":
        return smoke_objects(run)
    if run.kind in ("eval", "generate"):
        return sharded_objects(run)
    return training_objects(run)


class _LiteralDumper(yaml.SafeDumper):
    """Multi-line strings (the ConfigMap's config file) as readable literal blocks; no &id/*id aliases for
    objects shared between containers (kubectl and many tools reject or mangle them)."""

    def ignore_aliases(self, data):
        return True


def _str_representer(dumper, value: str):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _str_representer)


def to_yaml(run: Run, objects: list[dict]) -> str:
    """Deterministic multi-document YAML, opening with how to apply, check, follow and clean up the run."""
    ns, sel = run.settings.namespace, f"{RUN_LABEL}={run.name}"
    kinds = ("jobs,pytorchjobs" if any(o["kind"] == "PyTorchJob" for o in objects) else "jobs") + \
        ",networkpolicies,configmaps"
    container_name = "pytorch" if any(o["kind"] == "PyTorchJob" for o in objects) else (
        run.kind if run.kind in ("eval", "generate", "smoke") else "trainer")
    cluster = f" --cluster {run.cluster_path}" if run.cluster_path else ""
    config = f" --config {run.config_path}" if run.config_path else ""
    cluster += "".join(f" {o}" for o in run.overrides)
    header = [
        f"# rlvsdistill {run.kind} run '{run.name}' from {run.config_path or 'the cluster settings'}, image {run.image} "
        f"(config hash {run.config_hash})",
        f"# Apply:  rlvsdistill submit {run.kind}{config}{cluster} --image {run.image}"
        f"{' --local-image' if run.image.local else ''}"
        "   (or: kubectl apply -f THIS_FILE)",
        f"# Check:  kubectl -n {ns} get {kinds.split(',networkpolicies')[0]},pods -l {sel}",
        f"# Logs:   kubectl -n {ns} logs -f -l {sel} -c {container_name} --max-log-requests 16",
        f"# Clean:  kubectl -n {ns} delete {kinds} -l {sel}",
    ]
    docs = [yaml.dump(o, Dumper=_LiteralDumper, sort_keys=False, default_flow_style=False, width=120)
            for o in objects]
    return "\n".join(header) + "\n---\n" + "---\n".join(docs)
