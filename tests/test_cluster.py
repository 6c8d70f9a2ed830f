"""Kubernetes objects: every config renders and validates, goldens, GPU split, sidecar, literal arguments,
errors before any API call, the image's Dockerfile (hadolint; the rest is tests/test_image.py)."""

import copy
import json
import dataclasses
import os
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, SHARED, need
from rlvsdistill.cli import main
from rlvsdistill.cluster.examples import EXAMPLES, render_example
from rlvsdistill.cluster.render import prepare_run, render_objects, to_yaml
from rlvsdistill.cluster.settings import ClusterSettings, load_settings
from rlvsdistill.cluster.validate import crd_schema_from_file, validate_objects
from rlvsdistill.io import UserError

CRD = SHARED / "k8s" / "crds" / "kubeflow.org_pytorchjobs.yaml"
CLUSTERS = sorted((ROOT / "configs" / "cluster").glob("*.yaml"))
REGISTRY = "registry.example.org/team"
KIND_OF_PREFIX = {"grpo": "grpo", "sft": "sft", "generate": "generate", "eval": "eval"}


@pytest.fixture(scope="module")
def crd_schema():
    return crd_schema_from_file(need(CRD))


@pytest.fixture(autouse=True)
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # configs are named relative to the repository, as in the Makefile


def job_configs():
    for path in sorted((ROOT / "configs").glob("*/*.yaml")):
        kind = next((k for prefix, k in KIND_OF_PREFIX.items() if path.name.startswith(prefix)), None)
        if kind and path.parent.name in ("paper", "cpu", "demo"):
            yield kind, path.relative_to(ROOT)


def fitting_overrides(kind, settings):
    """Overrides that fit any job config to a cluster: any process count, and HF generation where the cluster
    leaves no GPU for vLLM's sidecar (cpu-node)."""
    return (["global_batch_size=null"] * (kind in ("grpo", "sft"))
            + ["use_vllm=false"] * (kind == "grpo" and settings.vllm_gpus == 0))


@pytest.mark.parametrize("cluster", CLUSTERS, ids=lambda p: p.name)
@pytest.mark.parametrize("kind,config", list(job_configs()), ids=lambda x: str(x))
def test_every_config_renders_and_validates(kind, config, cluster, crd_schema):
    settings = load_settings(str(cluster))
    try:
        run = prepare_run(kind, str(config), [], settings, f"{REGISTRY}/rlvsdistill:test-tag")
    except UserError as exc:
        # Refused with the fix named: a paper batch that the cluster's process count cannot make (multi-node), or
        # the vLLM server on a cluster with no GPU for its sidecar (cpu-node: HF generation instead).
        batch = "global_batch_size: the config means"
        expected = {"multi-node.yaml": (batch,), "cpu-node.yaml": (batch, "vllm_mode: server needs a sidecar")}
        assert any(e in str(exc) for e in expected.get(cluster.name, ())), exc
        run = prepare_run(kind, str(config), fitting_overrides(kind, settings), settings,
                          f"{REGISTRY}/rlvsdistill:test-tag")
    objects = render_objects(run)
    assert validate_objects(objects, settings.kubernetes_version, crd_schema) == []


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_golden_manifests_are_current_and_rendering_is_repeatable(name, crd_schema):
    first, second = render_example(name), render_example(name)
    assert first == second  # byte for byte
    golden = (ROOT / "k8s" / "examples" / name).read_text()
    assert first == golden, f"k8s/examples/{name} is stale: run `make k8s-examples` and review the diff"
    objects = [d for d in yaml.safe_load_all(golden) if d]
    assert validate_objects(objects, "1.33", crd_schema) == []


@pytest.mark.parametrize("path", sorted((ROOT / "k8s").glob("*.yaml")), ids=lambda p: p.name)
def test_static_manifests_validate_and_open_with_their_commands(path):
    text = path.read_text()
    for verb in ("# Apply:", "# Check:", "# Logs:", "# Clean:"):
        assert verb in text
    objects = [d for d in yaml.safe_load_all(text) if d]
    assert objects and validate_objects(objects, "1.33", None) == []


def grpo_run(settings=None, overrides=("global_batch_size=null",), tag="t1"):
    return prepare_run("grpo", "configs/paper/grpo_qwen2.5_math_1.5b.yaml", list(overrides),
                       settings or load_settings("configs/cluster/single-node.yaml"), f"{REGISTRY}/rlvsdistill:{tag}")


def test_grpo_job_splits_gpus_and_runs_vllm_as_native_sidecar():
    settings = ClusterSettings(grpo_gpus_per_node=8, vllm_gpus=2)
    job = render_objects(grpo_run(settings))[-1]
    pod = job["spec"]["template"]["spec"]
    [trainer], [sidecar] = pod["containers"], pod["initContainers"]
    assert trainer["resources"]["limits"]["nvidia.com/gpu"] == "6"
    assert sidecar["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert trainer["command"][trainer["command"].index("--num_processes") + 1] == "6"
    assert sidecar["restartPolicy"] == "Always"  # a native sidecar: the Job completes when the trainer exits
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/health" and "startupProbe" not in sidecar
    assert sidecar["command"][sidecar["command"].index("--tensor_parallel_size") + 1] == "2"
    # 256 prompt tokens + 3840 completion tokens, as the config's vllm_max_model_length says
    assert sidecar["command"][sidecar["command"].index("--max_model_len") + 1] == "4096"
    config = yaml.safe_load(render_objects(grpo_run(settings))[0]["data"]["config.yaml"])
    assert (config["vllm_server_host"], config["vllm_mode"]) == ("127.0.0.1", "server")  # the trainer: localhost


def test_killed_pod_restarts_and_resumes_from_the_volume():
    job = render_objects(grpo_run())[-1]
    assert job["spec"]["backoffLimit"] >= 1  # a killed pod is replaced, once it has ended (no two writers) ...
    assert job["spec"]["podReplacementPolicy"] == "Failed"
    pod = job["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert env["RLVSDISTILL_ROOT"].startswith(mounts["data"])  # ... and finds its checkpoints on the PVC
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "rlvsdistill-data"}} in pod["volumes"]


def test_multi_node_pytorchjob_keeps_the_sidecar_on_the_master():
    settings = dataclasses.replace(load_settings("configs/cluster/multi-node.yaml"), queue="gpu-queue")
    job = render_objects(grpo_run(settings))[-1]
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Worker"]["replicas"] == settings.grpo_nodes - 1
    assert "initContainers" in replicas["Master"]["template"]["spec"]
    assert "initContainers" not in replicas["Worker"]["template"]["spec"]
    # Kueue: the queue-name label and created suspended; not Volcano's schedulingPolicy.queue (immutable)
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == settings.queue
    assert job["spec"]["runPolicy"]["suspend"] is True and "schedulingPolicy" not in job["spec"]["runPolicy"]
    assert job["spec"]["runPolicy"]["cleanPodPolicy"] == "Running"
    assert {r["restartPolicy"] for r in replicas.values()} == {"ExitCode"}


def _nccl_host(container):
    env = [e["name"] for e in container["env"]]
    value = {e["name"]: e for e in container["env"]}.get("NCCL_HOSTID", {}).get("value")
    if value is not None:  # $(POD_UID) expands only when POD_UID is defined earlier in the list
        assert env.index("POD_UID") < env.index("NCCL_HOSTID")
        assert {e["name"]: e for e in container["env"]}["POD_UID"]["valueFrom"]["fieldRef"]["fieldPath"] == \
            "metadata.uid"
    return value


@pytest.mark.parametrize("cluster", ["configs/cluster/single-node.yaml", "configs/cluster/multi-node.yaml"])
def test_trainer_and_sidecar_have_host_ids_of_their_own(cluster):
    """They share the pod's hostname and the node's boot_id: NCCL must not take them for one host (nccl#1529)."""
    job = render_objects(grpo_run(load_settings(cluster)))[-1]
    specs = job["spec"].get("pytorchReplicaSpecs") or {"Master": job["spec"]}
    pod = specs["Master"]["template"]["spec"]
    [trainer], sidecar = pod["containers"], pod["initContainers"][-1]
    assert (_nccl_host(trainer), _nccl_host(sidecar)) == ("$(POD_UID)-trainer", "$(POD_UID)-vllm")
    if "Worker" in specs:  # a worker pod runs on a node of its own, with no sidecar: NCCL's default id is right
        assert _nccl_host(specs["Worker"]["template"]["spec"]["containers"][0]) is None
    smoke = render_objects(prepare_run("smoke", None, [], ClusterSettings(), f"{REGISTRY}/rlvsdistill:t"))[-1]
    spec = smoke["spec"]["template"]["spec"]
    assert (_nccl_host(spec["containers"][0]), _nccl_host(spec["initContainers"][-1])) == \
        ("$(POD_UID)-trainer", "$(POD_UID)-vllm")
    sft = render_objects(prepare_run("sft", "configs/paper/sft_qwen2.5_math_1.5b.yaml", ["global_batch_size=null"],
                                     load_settings("configs/cluster/single-node.yaml"), f"{REGISTRY}/rlvsdistill:t"))[-1]
    assert _nccl_host(sft["spec"]["template"]["spec"]["containers"][0]) is None


def test_pods_are_non_root_and_secrets_are_references():
    job = render_objects(grpo_run())[-1]
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    for c in pod["containers"] + pod["initContainers"]:
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        secret_env = [e for e in c["env"] if e["name"] in ("HF_TOKEN", "WANDB_API_KEY")]
        assert secret_env and all("secretKeyRef" in e["valueFrom"] for e in secret_env)
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"


def test_labels_name_run_config_hash_and_image():
    run = grpo_run(tag="abc123")
    labels = render_objects(run)[-1]["metadata"]["labels"]
    assert labels["rlvsdistill.io/run"] == run.name and labels["rlvsdistill.io/image-tag"] == "abc123"
    assert labels["rlvsdistill.io/config-hash"] == run.config_hash
    assert grpo_run(overrides=["learning_rate=2e-6"]).config_hash != run.config_hash


def kubelet_expand(arg: str, env: dict) -> str:
    """What the kubelet passes for a command argument: `$$` -> `$`, `$(VAR)` -> VAR's value when defined
    (Kubernetes' expansion rules, k8s.io/kubernetes/third_party/forked/golang/expansion)."""
    out, i = [], 0
    while i < len(arg):
        if arg[i] == "$" and i + 1 < len(arg):
            if arg[i + 1] == "$":
                out.append("$")
                i += 2
                continue
            if arg[i + 1] == "(" and ")" in arg[i + 2:]:
                name = arg[i + 2:arg.index(")", i + 2)]
                if name in env:
                    out.append(env[name])
                    i += len(name) + 3
                    continue
        out.append(arg[i])
        i += 1
    return "".join(out)


@pytest.mark.parametrize("value", ["; rm -rf /", "$(reboot)", "$(HF_HOME)", "a$$b",
                                   "`id` && echo 'x' \"y\" | tee /etc/passwd"])
def test_shell_metacharacters_stay_one_literal_argument(value):
    run = grpo_run(overrides=[f"model_name_or_path={yaml.safe_dump(value).strip()}"])
    config_map, _, job = render_objects(run)
    sidecar = job["spec"]["template"]["spec"]["initContainers"][0]
    env = {e["name"]: e["value"] for e in sidecar["env"] if "value" in e}
    model_arg = sidecar["command"][sidecar["command"].index("--model") + 1]
    assert kubelet_expand(model_arg, env) == value  # reaches vLLM as written, not expanded by Kubernetes
    assert yaml.safe_load(config_map["data"]["config.yaml"])["model_name_or_path"] == value
    for c in job["spec"]["template"]["spec"]["containers"]:
        assert "args" not in c and c["command"][0] in ("accelerate", "rlvsdistill", "trl")  # never `sh -c`


def test_only_the_launchers_own_env_references_are_expanded():
    job = render_objects(grpo_run(load_settings("configs/cluster/multi-node.yaml")))[-1]
    command = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["command"]
    env = {"RANK": "1", "MASTER_ADDR": "master-0", "MASTER_PORT": "23456", "PET_NODE_RANK": "1",
           "PET_MASTER_ADDR": "master-0", "PET_MASTER_PORT": "23456", "PET_NNODES": "2"}
    expanded = [kubelet_expand(c, env) for c in command]
    assert not any("$(" in c for c in expanded)  # every deliberate reference resolves ...
    assert expanded != command  # ... and there are some (the multi-node launch)


GRPO = ["grpo", "--config", "configs/paper/grpo_qwen2.5_math_1.5b.yaml"]
TAGGED = [*GRPO, "--registry", REGISTRY, "--image-tag", "t"]
DIGEST = "sha256:" + "0123456789abcdef" * 4
INVALID = [
    # (arguments after `rlvsdistill submit`, fragment of the error naming the field)
    (GRPO, "--image-tag: required"),
    ([*TAGGED, "--name", "Bad_Name"], "--name: 'Bad_Name' is not a valid run name"),
    ([*GRPO, "--registry", REGISTRY, "--image-tag", "bad tag!"], "--image-tag: 'bad tag!' is not a valid image tag"),
    ([*TAGGED, "output_dir=/tmp/x"], "output_dir: /tmp/x is outside the volume (/data)"),
    ([*TAGGED, "learning_rat=1"], "learning_rat: unknown key"),
    ([*TAGGED, "report_to=wandb"], "report_to: wandb, but the cluster settings name no wandb_secret"),
    ([*GRPO, "--image-tag", "t"], "names no registry, so every node would pull docker.io/rlvsdistill"),
    ([*GRPO, "--registry", "r.example /team", "--image-tag", "t"], "--registry (REGISTRY): 'r.example /team' contains"),
    ([*GRPO, "--registry", "https://r.example/team", "--image-tag", "t"], "has a URL scheme"),
    ([*GRPO, "--image", f"{REGISTRY}/rlvsdistill:v1", "--image-tag", "t"],
     "cannot be combined with --image-tag (IMAGE_TAG)"),
    ([*GRPO, "--image", f"{REGISTRY}/rlvsdistill:bad!tag"], "--image: tag 'bad!tag' is not a valid image tag"),
    ([*GRPO, "--image", f"{REGISTRY}/rlvsdistill@sha256:abc"], "--image: digest 'sha256:abc' is not sha256:"),
    ([*GRPO, "--image", f"{REGISTRY}/rlvsdistill"], "names no tag or digest"),
    ([*GRPO, "--image", f"{REGISTRY}/RLVSDistill:v1"], "path component 'RLVSDistill' is not valid"),
]


@pytest.mark.parametrize("args,fragment", INVALID)
def test_invalid_input_fails_before_any_api_call(args, fragment, capsys, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", "/nonexistent/kubeconfig")  # any API call would fail differently
    assert main(["submit", *args]) == 2
    assert fragment in capsys.readouterr().err


def test_invalid_cluster_settings_name_their_keys(tmp_path, capsys):
    bad = tmp_path / "cluster.yaml"
    bad.write_text("grpo_gpus_per_node: -1\nnamespace: Not_OK\nvllm_gpus: 9\nshm_size: lots\ncolour: blue\n"
                   "cpu_pod_cpu: 0\ncpu_pod_memory: 2 GB\n")
    assert main(["submit", *TAGGED, "--cluster", str(bad)]) == 2
    err = capsys.readouterr().err
    for fragment in ("grpo_gpus_per_node: must be a positive integer", "namespace: 'Not_OK' is not a valid",
                     "shm_size: 'lots' is not a Kubernetes quantity", "colour: unknown key",
                     "cpu_pod_cpu: must be a positive integer", "cpu_pod_memory: '2 GB' is not a Kubernetes"):
        assert fragment in err


def test_unknown_kind_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["submit", "ppo", *TAGGED[1:]])
    assert exc.value.code == 2 and "invalid choice: 'ppo'" in capsys.readouterr().err
    with pytest.raises(UserError, match="kind: 'ppo'"):
        prepare_run("ppo", "configs/paper/grpo_qwen2.5_math_1.5b.yaml", [], ClusterSettings(), f"{REGISTRY}/x:t")


def test_validation_catches_a_broken_object(crd_schema):
    job = render_objects(grpo_run())[-1]
    broken = copy.deepcopy(job)
    broken["spec"]["template"]["spec"]["containers"][0]["resourcez"] = {}
    assert any("resourcez" in p for p in validate_objects([broken], "1.33", None))
    pytorchjob = render_objects(grpo_run(load_settings("configs/cluster/multi-node.yaml")))[-1]
    pytorchjob["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = "one"
    assert any("replicas" in p for p in validate_objects([pytorchjob], "1.33", crd_schema))


def test_dry_run_prints_yaml_and_sends_nothing(capsys, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", "/nonexistent/kubeconfig")
    assert main(["submit", "eval", "--config", "configs/paper/eval_qwen2.5_math_1.5b_math500.yaml",
                 "--registry", REGISTRY, "--image-tag", "t", "--dry-run"]) == 0
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert [d["kind"] for d in docs] == ["ConfigMap", "NetworkPolicy", "Job", "Job"]
    assert docs[2]["spec"]["completionMode"] == "Indexed" and docs[2]["spec"]["completions"] == 4


def test_dockerfile_passes_hadolint():
    hadolint = os.path.join(os.path.dirname(sys.executable), "hadolint")
    proc = subprocess.run([hadolint, str(ROOT / "images" / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---------------------------------------------------------------------------------------------------------
# Hardening
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,config,shards", [
    ("eval", "configs/paper/eval_qwen2.5_math_1.5b_math500.yaml", 4),
    ("generate", "configs/paper/generate_qwq32b_math_train.yaml", 16),
])
def test_sampling_runs_as_an_indexed_job_and_a_merge_job(kind, config, shards):
    """Eval and teacher sampling (issue 12): one pod per shard of an Indexed Job, then `<kind>-merge`."""
    settings = load_settings("configs/cluster/single-node.yaml")
    _, _, job, merge_job = render_objects(prepare_run(kind, config, [], settings, f"{REGISTRY}/rlvsdistill:t1"))
    assert (job["spec"]["completionMode"], job["spec"]["completions"]) == ("Indexed", shards)
    [worker] = job["spec"]["template"]["spec"]["containers"]
    assert worker["command"][:2] == ["rlvsdistill", kind]
    [merger] = merge_job["spec"]["template"]["spec"]["containers"]
    assert merger["command"][:2] == ["rlvsdistill", f"{kind}-merge"]
    assert "nvidia.com/gpu" not in merger["resources"].get("limits", {})  # the merge needs no GPU


def test_a_filter_of_teacher_samples_is_one_cpu_job():
    """A per-student filter (teacher_samples) samples nothing: one CPU pod running `generate`, no shards, no merge."""
    settings = load_settings("configs/cluster/single-node.yaml")
    run = prepare_run("generate", "configs/paper/generate_qwq32b_for_qwen2.5_3b.yaml", [], settings,
                      f"{REGISTRY}/rlvsdistill:t1")
    kinds = [o["kind"] for o in render_objects(run)]
    assert kinds == ["ConfigMap", "NetworkPolicy", "Job"]
    job = render_objects(run)[2]
    assert "completionMode" not in job["spec"]
    [worker] = job["spec"]["template"]["spec"]["containers"]
    assert worker["command"] == ["rlvsdistill", "generate", "--config", "/etc/rlvsdistill/config.yaml"]
    assert "nvidia.com/gpu" not in worker["resources"]["limits"]


def test_pods_without_a_gpu_take_their_size_from_the_cluster_file():
    """cpu_pod_cpu/cpu_pod_memory size the GPU-less pods (found on a real 2-core kubelet, issue 15: a hard-coded 2 CPUs
    per merge left it Pending beside its shards); the merge keeps its own memory, sized from the problem count."""
    settings = dataclasses.replace(ClusterSettings(), cpu_pod_cpu=1, cpu_pod_memory="3Gi")
    run = prepare_run("generate", "configs/paper/generate_qwq32b_for_qwen2.5_3b.yaml", [], settings,
                      f"{REGISTRY}/rlvsdistill:t1")
    [worker] = render_objects(run)[2]["spec"]["template"]["spec"]["containers"]
    assert (worker["resources"]["requests"]["cpu"], worker["resources"]["requests"]["memory"]) == ("1", "3Gi")
    assert worker["resources"]["limits"]["memory"] == "3Gi"
    run = prepare_run("eval", "configs/paper/eval_qwen2.5_math_1.5b_math500.yaml", [], settings,
                      f"{REGISTRY}/rlvsdistill:t1")
    [merger] = render_objects(run)[-1]["spec"]["template"]["spec"]["containers"]
    assert merger["resources"]["requests"]["cpu"] == "1" and merger["resources"]["requests"]["memory"] != "3Gi"


def every_run():
    """(cluster file, kind, config, overrides) of every example plus the multi-node eval and generate."""
    for kind, config, cluster, overrides in EXAMPLES.values():
        yield cluster, kind, config, overrides
    yield "configs/cluster/multi-node.yaml", "eval", "configs/paper/eval_qwen2.5_math_1.5b_math500.yaml", []


def pod_specs(obj):
    if obj["kind"] == "Job":
        return [obj["spec"]["template"]["spec"]]
    if obj["kind"] == "PyTorchJob":
        return [r["template"]["spec"] for r in obj["spec"]["pytorchReplicaSpecs"].values()]
    return []


def all_pods():
    for cluster, kind, config, overrides in every_run():
        run = prepare_run(kind, config, overrides, load_settings(cluster), "registry.example.org/team/rlvsdistill:t1")
        for obj in render_objects(run):
            for spec in pod_specs(obj):
                yield run, obj, spec


def test_no_pod_gets_an_api_token_but_the_merge_and_its_own_projected_one():
    for run, obj, spec in all_pods():
        assert spec["automountServiceAccountToken"] is False, obj["metadata"]["name"]
        projected = [v for v in spec["volumes"] if "projected" in v]
        if obj["metadata"]["name"].endswith("-merge"):
            [token] = projected
            assert token["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"] == 3600
            assert spec["serviceAccountName"] == "rlvsdistill-merge"
        else:
            assert not projected


def test_secrets_reach_only_the_containers_that_need_them():
    seen = {}
    for run, obj, spec in all_pods():
        for c in spec["containers"] + spec.get("initContainers", []):
            seen[c["name"]] = {e["name"] for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert seen["merge"] == set()  # reads the volume only
    assert seen["vllm"] == {"HF_TOKEN"}  # downloads the model, logs nothing to W&B
    assert seen["eval"] == seen["generate"] == {"HF_TOKEN"}
    assert seen["pytorch"] == {"HF_TOKEN"}  # multi-node.yaml names no W&B secret (the README creates none)
    with_wandb = dataclasses.replace(load_settings("configs/cluster/multi-node.yaml"), wandb_secret="wandb")
    job = render_objects(grpo_run(with_wandb))[-1]
    master = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    trainer, sidecar = master["containers"][0], master["initContainers"][0]
    assert {e["name"] for e in trainer["env"] if "secretKeyRef" in e.get("valueFrom", {})} == {"HF_TOKEN",
                                                                                              "WANDB_API_KEY"}
    assert "WANDB_API_KEY" not in {e["name"] for e in sidecar["env"]}


def test_network_policy_admits_only_the_runs_own_pods():
    run = grpo_run(load_settings("configs/cluster/multi-node.yaml"))
    objects = render_objects(run)
    [policy] = [o for o in objects if o["kind"] == "NetworkPolicy"]
    own = {"podSelector": {"matchLabels": {"rlvsdistill.io/run": run.name}}}
    assert policy["spec"]["podSelector"] == own["podSelector"] and policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["ingress"] == [{"from": [own]}]  # no namespaceSelector, no ipBlock: nobody else
    for spec in pod_specs(objects[-1]):
        assert spec.get("containers") and all(
            {"rlvsdistill.io/run": run.name}.items() <= objects[-1]["spec"]["pytorchReplicaSpecs"][r]["template"][
                "metadata"]["labels"].items() for r in ("Master", "Worker"))
    master = objects[-1]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    sidecar, trainer = master["initContainers"][0], master["containers"][0]
    # vLLM's API on the sidecar; TRL 1.16's weight-sync group on the trainer, its rank 0 (issue 17, item 10)
    assert [p["containerPort"] for p in sidecar["ports"]] == [8000]
    assert [p["containerPort"] for p in trainer["ports"]] == [51216]
    assert "vllm-sidecar:8000,trainer-weight-sync:51216" == policy["metadata"]["annotations"]["rlvsdistill.io/serves"]
    eval_run = prepare_run("eval", "configs/paper/eval_qwen2.5_math_1.5b_math500.yaml", [],
                           load_settings("configs/cluster/single-node.yaml"), "registry.example.org/team/rlvsdistill:t1")
    assert "rlvsdistill.io/serves" not in render_objects(eval_run)[1]["metadata"]["annotations"]  # serves no port


def test_cpu_only_containers_see_no_gpu_and_gpu_ones_keep_them():
    for run, obj, spec in all_pods():
        for c in spec["containers"] + spec.get("initContainers", []):
            env = {e["name"]: e.get("value") for e in c["env"]}
            gpus = int(c["resources"]["limits"].get("nvidia.com/gpu", 0))
            assert (env.get("NVIDIA_VISIBLE_DEVICES") == "void") == (gpus == 0), c["name"]


def test_volumes_caches_and_security_context():
    for run, obj, spec in all_pods():
        assert spec["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert "emptyDir" in volumes["cache"] and "emptyDir" in volumes["tmp"]
        for c in spec["containers"]:
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert mounts["/cache"] == "cache" and mounts["/tmp"] == "tmp"  # HF, Triton, torch, XDG caches
            env = {e["name"]: e.get("value") for e in c["env"]}
            assert env["TQDM_DISABLE"] == "1"  # no '\r' bars in `kubectl logs`


def test_model_cache_pvc_is_mounted_read_only_and_pods_go_offline():
    settings = dataclasses.replace(load_settings("configs/cluster/multi-node.yaml"), model_cache_pvc="models")
    job = render_objects(grpo_run(settings))[-1]
    spec = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": "models"}} in spec["volumes"]
    trainer = spec["containers"][0]
    assert {"name": "model-cache", "mountPath": "/models"} in trainer["volumeMounts"]
    env = {e["name"]: e.get("value") for e in trainer["env"]}
    assert (env["HF_HUB_OFFLINE"], env["HF_HUB_CACHE"], env["HF_DATASETS_CACHE"]) == ("1", "/models/hub",
                                                                                       "/models/datasets")
    prefetch = prepare_run("grpo", "configs/paper/grpo_qwen2.5_math_1.5b.yaml", [], settings,
                           "registry.example.org/team/rlvsdistill:t1", prefetch=True)
    [fetch] = render_objects(prefetch)[-1]["spec"]["template"]["spec"]["containers"]
    assert fetch["command"][:3] == ["python", "-m", "rlvsdistill.prefetch"] and prefetch.name.startswith("prefetch-")
    fetch_env = {e["name"]: e.get("value") for e in fetch["env"]}
    assert "HF_HUB_OFFLINE" not in fetch_env and fetch_env["HF_HUB_CACHE"] == "/models/hub"
    with pytest.raises(UserError, match="--prefetch-model: the cluster settings have no model_cache_pvc"):
        prepare_run("grpo", "configs/paper/grpo_qwen2.5_math_1.5b.yaml", [], ClusterSettings(),
                    "registry.example.org/team/rlvsdistill:t1", prefetch=True)


def test_yaml_has_no_aliases():
    for name in EXAMPLES:
        text = render_example(name)
        assert "&id" not in text and "*id" not in text, name


def test_single_shard_eval_has_no_second_merge_and_the_merge_runs_once():
    one = prepare_run("eval", "configs/paper/eval_qwen2.5_math_1.5b_math500.yaml", ["num_shards=1"],
                      load_settings("configs/cluster/single-node.yaml"), "registry.example.org/team/rlvsdistill:t1")
    assert [o["kind"] for o in render_objects(one)] == ["ConfigMap", "NetworkPolicy", "Job"]  # the shard merges
    four = prepare_run("eval", "configs/paper/eval_qwen2.5_math_1.5b_math500.yaml", [],
                       load_settings("configs/cluster/single-node.yaml"), "registry.example.org/team/rlvsdistill:t1")
    merge = render_objects(four)[-1]
    assert merge["metadata"]["name"].endswith("-merge") and merge["spec"]["backoffLimit"] == 0


def test_kueue_startup_allowance_must_fit_wait_for_pods_ready(tmp_path, capsys):
    bad = tmp_path / "cluster.yaml"
    bad.write_text("queue: gpu-queue\nkueue_pods_ready_timeout_seconds: 300\nvllm_startup_seconds: 1800\n")
    assert main(["submit", "grpo", "--config", "configs/paper/grpo_qwen2.5_math_1.5b.yaml", "--registry", REGISTRY,
                 "--image-tag", "t",
                 "--cluster", str(bad), "--dry-run"]) == 2
    assert "vllm_startup_seconds: 1800 exceeds kueue_pods_ready_timeout_seconds: 300" in capsys.readouterr().err
    bad.write_text("queue: gpu-queue\nkueue_pods_ready_timeout_seconds: 600\nvllm_startup_seconds: 600\n")
    assert main(["submit", "grpo", "--config", "configs/paper/grpo_qwen2.5_math_1.5b.yaml", "--registry", REGISTRY,
                 "--image-tag", "t",
                 "--cluster", str(bad), "--dry-run"]) == 0
    out = capsys.readouterr().out
    job = [d for d in yaml.safe_load_all(out) if d][-1]
    sidecar = job["spec"]["template"]["spec"]["initContainers"][0]
    # No startup probe (it would hold the trainer back for ever if vLLM never loaded): the trainer waits 600 s.
    assert "startupProbe" not in sidecar and sidecar["readinessProbe"]["httpGet"]["path"] == "/health"
    config = yaml.safe_load(next(d for d in yaml.safe_load_all(out) if d and d["kind"] == "ConfigMap")["data"][
        "config.yaml"])
    assert config["vllm_server_timeout"] == 600
    assert job["spec"]["suspend"] is True


@pytest.mark.parametrize("setting,override,fragment", [
    ("queue: Not_A_Label", [], "queue: 'Not_A_Label' is not a valid Kubernetes DNS label"),
    ("pvc: data/v1", [], "pvc: 'data/v1' is not a valid Kubernetes object name"),
    ("model_cache_pvc: a/b", [], "model_cache_pvc: 'a/b' is not a valid Kubernetes object name"),
    ("namespace: rlvsdistill", ["num_shards=0"], "num_shards: must be a positive integer"),
])
def test_bad_input_is_named_and_nothing_is_sent(setting, override, fragment, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", "/nonexistent/kubeconfig")  # any API call would fail differently
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(setting + "\n")
    assert main(["submit", "eval", "--config", "configs/paper/eval_qwen2.5_math_1.5b_math500.yaml", "--registry",
                 REGISTRY, "--image-tag", "t", "--cluster", str(cluster), *override]) == 2
    assert fragment in capsys.readouterr().err


def test_a_run_with_another_config_hash_refuses_to_resume(tmp_path, monkeypatch):
    from rlvsdistill.paths import CONFIG_HASH_ENV, RESUME_ANYWAY_ENV, write_run_record

    monkeypatch.setenv(CONFIG_HASH_ENV, "aaaaaaaaaaaa")
    write_run_record(tmp_path, "grpo", {"learning_rate": 1e-6})
    assert json.loads((tmp_path / "run_record.json").read_text())["config_hash"] == "aaaaaaaaaaaa"
    write_run_record(tmp_path, "grpo", {"learning_rate": 1e-6})  # the same run restarted: resumes
    monkeypatch.setenv(CONFIG_HASH_ENV, "bbbbbbbbbbbb")  # `submit --replace` after editing the config
    with pytest.raises(UserError, match="made with config hash aaaaaaaaaaaa, this run's is bbbbbbbbbbbb"):
        write_run_record(tmp_path, "grpo", {"learning_rate": 2e-6})
    monkeypatch.setenv(RESUME_ANYWAY_ENV, "1")
    write_run_record(tmp_path, "grpo", {"learning_rate": 2e-6})
    run = prepare_run("grpo", "configs/paper/grpo_qwen2.5_math_1.5b.yaml", [],
                      load_settings("configs/cluster/single-node.yaml"), "registry.example.org/team/rlvsdistill:t1", resume_anyway=True)
    env = {e["name"]: e.get("value") for e in render_objects(run)[-1]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env[CONFIG_HASH_ENV] == run.config_hash and env[RESUME_ANYWAY_ENV] == "1"


def test_submit_path_imports_neither_torch_nor_trl():
    # The `train` extra's packages made unimportable, as on a machine with only the `cluster` extra.
    code = ("import sys; sys.modules.update(dict.fromkeys(('torch', 'trl', 'transformers', 'deepspeed', "
            "'accelerate', 'datasets', 'peft', 'vllm'))); from rlvsdistill.cli import main; "
            "rc = main(['submit', 'grpo', '--config', 'configs/paper/grpo_qwen2.5_3b.yaml', '--registry', 'r.example/team', '--image-tag', 't', "
            "'--cluster', 'configs/cluster/multi-node.yaml', '--dry-run', 'learning_rate=2e-6', "
            "'gradient_accumulation_steps=5']); "
            "heavy = sorted(m for m in ('torch', 'trl', 'transformers', 'deepspeed') if sys.modules[m]); "
            "print('heavy:', heavy); sys.exit(rc or bool(heavy))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and "heavy: []" in proc.stdout, proc.stdout[-500:] + proc.stderr[-2000:]


def test_saved_trl_fields_match_the_installed_trl():
    from rlvsdistill.config import TRL_FIELDS_FILE, trl_field_types

    assert json.loads(TRL_FIELDS_FILE.read_text()) == trl_field_types(), \
        "TRL changed: run `python -m rlvsdistill.config` and review the diff"


def _containers(objects):
    for obj in objects:
        specs = ([r["template"] for r in obj["spec"]["pytorchReplicaSpecs"].values()] if obj["kind"] == "PyTorchJob"
                 else [obj["spec"]["template"]] if obj["kind"] == "Job" else [])
        for template in specs:
            yield from template["spec"]["containers"] + template["spec"].get("initContainers", [])


def test_make_render_puts_the_registry_and_tag_in_every_container():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("IMAGE_TAG", None)
    env.pop("REGISTRY", None)
    proc = subprocess.run(["make", "-s", "render-grpo", "REGISTRY=r.example/team", "IMAGE_TAG=abc",
                           "CLUSTER=configs/cluster/multi-node.yaml", "OVERRIDES=gradient_accumulation_steps=5"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    objects = [d for d in yaml.safe_load_all(proc.stdout) if d]
    containers = list(_containers(objects))
    assert len(containers) == 3  # the Master's trainer and sidecar, the Worker's trainer
    assert {c["image"] for c in containers} == {"r.example/team/rlvsdistill:abc"}
    assert {c["imagePullPolicy"] for c in containers} == {"Always"}  # a tag can move
    proc = subprocess.run(["make", "-s", "render-grpo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "names no registry" in proc.stderr and not proc.stdout


def test_a_digest_is_pulled_if_not_present_and_annotated(capsys):
    image = f"{REGISTRY}/rlvsdistill@{DIGEST}"
    assert main(["submit", *GRPO, "--image", image, "--dry-run"]) == 0
    objects = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert {(c["image"], c["imagePullPolicy"]) for c in _containers(objects)} == {(image, "IfNotPresent")}
    for obj in objects:
        assert obj["metadata"]["annotations"]["rlvsdistill.io/image-digest"] == DIGEST
        assert "rlvsdistill.io/image-tag" not in obj["metadata"]["labels"]
    pod = next(o for o in objects if o["kind"] == "Job")["spec"]["template"]
    assert pod["metadata"]["annotations"]["rlvsdistill.io/image"] == image
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["RLVSDISTILL_IMAGE"] == image and env["IMAGE_TAG"] == DIGEST  # recorded in run_record.json


def test_a_local_image_needs_no_registry_and_is_never_pulled(capsys):
    assert main(["submit", *GRPO, "--image-tag", "dev", "--local-image", "--dry-run"]) == 0
    objects = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert {(c["image"], c["imagePullPolicy"]) for c in _containers(objects)} == {("rlvsdistill:dev", "Never")}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_no_pod_waits_for_a_secret(name):
    """Secrets the README does not create are optional: a pod starts without them (HF token: public models)."""
    objects = [d for d in yaml.safe_load_all((ROOT / "k8s" / "examples" / name).read_text()) if d]
    refs = [e["valueFrom"]["secretKeyRef"] for c in _containers(objects) for e in c["env"]
            if "secretKeyRef" in e.get("valueFrom", {})]
    assert refs and all(r["optional"] is True for r in refs)
    for cluster in CLUSTERS:
        assert load_settings(str(cluster)).wandb_secret is None  # the README creates no W&B Secret
