"""Where and how jobs run on a cluster: namespace, volume, GPUs per job, secrets, queue (``configs/cluster/*.yaml``).

Kept apart from the job configs, so one GRPO config runs on any cluster; both are hashed into each run's labels.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from ..config import coerce_numbers, read_yaml
from ..io import UserError

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")


@dataclass
class ClusterSettings:
    """A cluster's settings; every field has a default except what only the user can know."""

    namespace: str = field(default="rlvsdistill", metadata={"help": "namespace of every object"})
    kubernetes_version: str = field(default="1.33", metadata={"help": "API version the objects are validated for"})
    image_repository: str = field(default="rlvsdistill", metadata={"help": "image name, with its registry"})
    pvc: str = field(default="rlvsdistill-data", metadata={"help": "ReadWriteMany PVC for checkpoints and results"})
    mount_path: str = field(default="/data", metadata={"help": "where the PVC is mounted in every pod"})
    service_account: str | None = field(default=None, metadata={"help": "service account of the job pods"})
    merge_service_account: str = field(default="rlvsdistill-merge", metadata={
        "help": "service account of the eval merge Job: may read Jobs (k8s/rbac.yaml)"})
    queue: str | None = field(default=None, metadata={
        "help": "Kueue LocalQueue: label kueue.x-k8s.io/queue-name, objects created suspended"})
    kueue_pods_ready_timeout_seconds: int | None = field(default=None, metadata={
        "help": "Kueue's waitForPodsReady.timeout when enabled (Kueue's default: 300); must cover vLLM's start"})
    priority_class: str | None = None
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict] = field(default_factory=list)
    gpu_resource: str = "nvidia.com/gpu"
    hf_token_secret: str | None = field(default=None, metadata={"help": "existing Secret with key 'token'"})
    wandb_secret: str | None = field(default=None, metadata={"help": "existing Secret with key 'api-key'"})
    shm_size: str = field(default="64Gi", metadata={"help": "size of the memory-backed /dev/shm"})
    hf_cache_size: str = field(default="200Gi", metadata={"help": "node-local /cache (emptyDir): HF, Triton, ..."})
    model_cache_pvc: str | None = field(default=None, metadata={
        "help": "ReadWriteMany PVC with the models and datasets (make prefetch-model); pods run offline"})
    cpu_per_gpu: int = 8
    memory_per_gpu: str = "80Gi"
    cpu_pod_cpu: int = field(default=2, metadata={
        "help": "CPUs of each pod without a GPU: merges, filters, evaluation with backend: hf"})
    cpu_pod_memory: str = field(default="8Gi", metadata={
        "help": "memory of each pod without a GPU (the merges size their own from the problem count)"})
    backoff_limit: int = field(default=3, metadata={"help": "pod restarts before a run fails (each resumes)"})
    active_deadline_seconds: int = field(default=1209600, metadata={
        "help": "backstop: every workload fails after this long running (activeDeadlineSeconds; default 14 days)"})
    fabric_resources: dict[str, int] = field(default_factory=dict, metadata={
        "help": "extra resources of each training container for a fast inter-node fabric, e.g. "
                "{vpc.amazonaws.com/efa: 32} or {rdma/ib: 8}; without them NCCL runs over TCP"})
    fabric_env: dict[str, str] = field(default_factory=dict, metadata={
        "help": "extra env of each training container for that fabric, e.g. {FI_PROVIDER: efa, NCCL_IB_HCA: mlx5}"})
    fabric_annotations: dict[str, str] = field(default_factory=dict, metadata={
        "help": "extra annotations of each training pod, e.g. a Multus k8s.v1.cni.cncf.io/networks for GPUDirect-TCPX"})
    image_pull_secrets: list[str] = field(default_factory=list, metadata={
        "help": "Secrets (kubernetes.io/dockerconfigjson) every pod pulls the image with"})
    ttl_seconds_after_finished: int | None = 604800
    grpo_nodes: int = field(default=1, metadata={"help": "1: a batch Job; more: a PyTorchJob"})
    grpo_gpus_per_node: int = 8
    vllm_gpus: int = field(default=1, metadata={"help": "GPUs of the vLLM server sidecar (on the first node)"})
    vllm_port: int = 8000
    vllm_gpu_memory_utilization: float = 0.9
    vllm_startup_seconds: int = field(default=1800, metadata={
        "help": "how long the trainer waits for the vLLM sidecar to load (GRPOConfig.vllm_server_timeout)"})
    sft_nodes: int = 1
    sft_gpus_per_node: int = 8
    eval_parallelism: int = field(default=4, metadata={"help": "evaluation shards running at once"})
    merge_wait_seconds: int = field(default=86400, metadata={
        "help": "deadline of the merge for the shards Job to finish (time while Kueue holds it suspended excluded)"})


def check_settings(values: dict) -> list[str]:
    """Every problem with raw cluster settings, one line each with its key."""
    names = {f.name for f in dataclasses.fields(ClusterSettings)}
    problems = [f"{k}: unknown key for cluster settings" for k in values if k not in names]
    problems += coerce_numbers(ClusterSettings, values)
    for key in ("namespace", "pvc", "queue", "model_cache_pvc", "service_account", "merge_service_account",
                "priority_class", "hf_token_secret", "wandb_secret"):
        value = values.get(key, getattr(ClusterSettings, key, None) or "x")
        if value is None and key not in ("namespace", "pvc", "merge_service_account"):
            continue
        label = key in ("namespace", "queue")  # DNS labels; the others are object names (DNS subdomains)
        pattern, most = (DNS_LABEL, 63) if label else (DNS_SUBDOMAIN, 253)
        if not isinstance(value, str) or not pattern.fullmatch(value) or len(value) > most:
            problems.append(f"{key}: {value!r} is not a valid Kubernetes {'DNS label' if label else 'object name'} "
                            "(lower case letters, digits, '-'" + ("" if label else ", '.'") + ")")
    for key in ("grpo_nodes", "grpo_gpus_per_node", "sft_nodes", "sft_gpus_per_node", "eval_parallelism",
                "cpu_per_gpu", "cpu_pod_cpu"):
        value = values.get(key, 1)
        if not isinstance(value, int) or value < 1:
            problems.append(f"{key}: must be a positive integer, got {value!r}")
    vllm = values.get("vllm_gpus", 1)
    gpus = values.get("grpo_gpus_per_node", 8)
    if not isinstance(vllm, int) or vllm < 0:
        problems.append(f"vllm_gpus: must be 0 or more, got {vllm!r}")
    elif isinstance(gpus, int) and vllm >= gpus:
        problems.append(f"vllm_gpus: {vllm} leaves no GPU for the trainer (grpo_gpus_per_node = {gpus})")
    for key in ("shm_size", "hf_cache_size", "memory_per_gpu", "cpu_pod_memory"):
        value = values.get(key, "1Gi")
        if not isinstance(value, str) or not QUANTITY.match(value):
            problems.append(f"{key}: {value!r} is not a Kubernetes quantity (e.g. 64Gi)")
    for key in ("fabric_resources", "fabric_env", "fabric_annotations"):
        value = values.get(key, {})
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value) or (
                key == "fabric_resources" and not all(isinstance(v, int) and v > 0 for v in value.values())):
            problems.append(f"{key}: {value!r} is not a mapping of names to "
                            + ("positive integers" if key == "fabric_resources" else "strings"))
    pull = values.get("image_pull_secrets", [])
    if not isinstance(pull, list) or not all(isinstance(v, str) and DNS_SUBDOMAIN.fullmatch(v) for v in pull):
        problems.append(f"image_pull_secrets: {pull!r} is not a list of Secret names")
    defaults = ClusterSettings()
    deadline = values.get("active_deadline_seconds", defaults.active_deadline_seconds)
    merge_wait = values.get("merge_wait_seconds", defaults.merge_wait_seconds)
    if not isinstance(deadline, int) or deadline < 1:
        problems.append(f"active_deadline_seconds: must be a positive integer, got {deadline!r}")
    elif isinstance(merge_wait, int) and deadline <= merge_wait:
        problems.append(f"active_deadline_seconds: {deadline} must exceed merge_wait_seconds ({merge_wait}), or "
                        "the merge Job would be cut off before its own deadline")
    for key in ("backoff_limit",):
        if not isinstance(values.get(key, 0), int) or values.get(key, 0) < 0:
            problems.append(f"{key}: must be 0 or more")
    return problems


def load_settings(path: str | None) -> ClusterSettings:
    """Cluster settings from a YAML file (defaults when ``path`` is None); UserError lists every problem."""
    values = read_yaml(path) if path else {}
    problems = check_settings(values)
    if problems:
        raise UserError(f"{path}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    return ClusterSettings(**values)
