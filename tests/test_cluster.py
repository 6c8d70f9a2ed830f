"""Kubernetes objects: every config renders and validates, goldens, GPU split, sidecar, literal arguments,
errors before any API call, the image's Dockerfile and requirement set."""

import copy
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


@pytest.mark.parametrize("cluster", CLUSTERS, ids=lambda p: p.name)
@pytest.mark.parametrize("kind,config", list(job_configs()), ids=lambda x: str(x))
def test_every_config_renders_and_validates(kind, config, cluster, crd_schema):
    settings = load_settings(str(cluster))
    try:
        run = prepare_run(kind, str(config), [], settings, "test-tag")
    except UserError as exc:  # a paper batch the cluster's process count cannot make: refused, with the fix named
        assert "global_batch_size: the config means" in str(exc) and cluster.name == "multi-node.yaml", exc
        run = prepare_run(kind, str(config), ["global_batch_size=null"], settings, "test-tag")
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
                       settings or load_settings("configs/cluster/single-node.yaml"), tag)


def test_grpo_job_splits_gpus_and_runs_vllm_as_native_sidecar():
    settings = ClusterSettings(grpo_gpus_per_node=8, vllm_gpus=2)
    _, job = render_objects(grpo_run(settings))
    pod = job["spec"]["template"]["spec"]
    [trainer], [sidecar] = pod["containers"], pod["initContainers"]
    assert trainer["resources"]["limits"]["nvidia.com/gpu"] == "6"
    assert sidecar["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert trainer["command"][trainer["command"].index("--num_processes") + 1] == "6"
    assert sidecar["restartPolicy"] == "Always"  # a native sidecar: the Job completes when the trainer exits
    assert sidecar["startupProbe"]["httpGet"]["path"] == "/health"
    assert sidecar["command"][sidecar["command"].index("--tensor_parallel_size") + 1] == "2"
    # 256 prompt tokens + 3840 completion tokens, as the config's vllm_max_model_length says
    assert sidecar["command"][sidecar["command"].index("--max_model_len") + 1] == "4096"
    config = yaml.safe_load(render_objects(grpo_run(settings))[0]["data"]["config.yaml"])
    assert (config["vllm_server_host"], config["vllm_mode"]) == ("127.0.0.1", "server")  # the trainer: localhost


def test_killed_pod_restarts_and_resumes_from_the_volume():
    _, job = render_objects(grpo_run())
    assert job["spec"]["backoffLimit"] >= 1  # a killed pod is replaced ...
    pod = job["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert env["RLVSDISTILL_ROOT"].startswith(mounts["data"])  # ... and finds its checkpoints on the PVC
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "rlvsdistill-data"}} in pod["volumes"]


def test_multi_node_pytorchjob_keeps_the_sidecar_on_the_master():
    settings = load_settings("configs/cluster/multi-node.yaml")
    _, job = render_objects(grpo_run(settings))
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Worker"]["replicas"] == settings.grpo_nodes - 1
    assert "initContainers" in replicas["Master"]["template"]["spec"]
    assert "initContainers" not in replicas["Worker"]["template"]["spec"]
    assert job["spec"]["runPolicy"]["schedulingPolicy"]["queue"] == settings.queue


def test_pods_are_non_root_and_secrets_are_references():
    _, job = render_objects(grpo_run())
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    for c in pod["containers"] + pod["initContainers"]:
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        secret_env = [e for e in c["env"] if "valueFrom" in e]
        assert secret_env and all("secretKeyRef" in e["valueFrom"] for e in secret_env)
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"


def test_labels_name_run_config_hash_and_image():
    run = grpo_run(tag="abc123")
    labels = render_objects(run)[1]["metadata"]["labels"]
    assert labels["rlvsdistill.io/run"] == run.name and labels["rlvsdistill.io/image-tag"] == "abc123"
    assert labels["rlvsdistill.io/config-hash"] == run.config_hash
    assert grpo_run(overrides=["learning_rate=2e-6"]).config_hash != run.config_hash


@pytest.mark.parametrize("value", ["; rm -rf /", "$(reboot)", "`id` && echo 'x' \"y\" | tee /etc/passwd"])
def test_shell_metacharacters_stay_one_literal_argument(value):
    run = grpo_run(overrides=[f"model_name_or_path={yaml.safe_dump(value).strip()}"])
    config_map, job = render_objects(run)
    sidecar = job["spec"]["template"]["spec"]["initContainers"][0]
    assert sidecar["command"][sidecar["command"].index("--model") + 1] == value
    assert yaml.safe_load(config_map["data"]["config.yaml"])["model_name_or_path"] == value
    for c in job["spec"]["template"]["spec"]["containers"]:
        assert "args" not in c and c["command"][0] in ("accelerate", "rlvsdistill", "trl")  # never `sh -c`


INVALID = [
    # (arguments after `rlvsdistill submit`, fragment of the error naming the field)
    (["grpo", "--config", "configs/paper/grpo_qwen2.5_math_1.5b.yaml"], "--image-tag: required"),
    (["grpo", "--config", "configs/paper/grpo_qwen2.5_math_1.5b.yaml", "--image-tag", "t", "--name", "Bad_Name"],
     "--name: 'Bad_Name' is not a valid run name"),
    (["grpo", "--config", "configs/paper/grpo_qwen2.5_math_1.5b.yaml", "--image-tag", "bad tag!"],
     "--image-tag: 'bad tag!' is not a valid image tag"),
    (["grpo", "--config", "configs/paper/grpo_qwen2.5_math_1.5b.yaml", "--image-tag", "t", "output_dir=/tmp/x"],
     "output_dir: /tmp/x is outside the volume (/data)"),
    (["grpo", "--config", "configs/paper/grpo_qwen2.5_math_1.5b.yaml", "--image-tag", "t", "learning_rat=1"],
     "learning_rat: unknown key"),
]


@pytest.mark.parametrize("args,fragment", INVALID)
def test_invalid_input_fails_before_any_api_call(args, fragment, capsys, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", "/nonexistent/kubeconfig")  # any API call would fail differently
    assert main(["submit", *args]) == 2
    assert fragment in capsys.readouterr().err


def test_invalid_cluster_settings_name_their_keys(tmp_path, capsys):
    bad = tmp_path / "cluster.yaml"
    bad.write_text("grpo_gpus_per_node: -1\nnamespace: Not_OK\nvllm_gpus: 9\nshm_size: lots\ncolour: blue\n")
    assert main(["submit", "grpo", "--config", "configs/paper/grpo_qwen2.5_math_1.5b.yaml", "--image-tag", "t",
                 "--cluster", str(bad)]) == 2
    err = capsys.readouterr().err
    for fragment in ("grpo_gpus_per_node: must be a positive integer", "namespace: 'Not_OK' is not a valid",
                     "shm_size: 'lots' is not a Kubernetes quantity", "colour: unknown key"):
        assert fragment in err


def test_unknown_kind_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["submit", "ppo", "--config", "configs/paper/grpo_qwen2.5_math_1.5b.yaml", "--image-tag", "t"])
    assert exc.value.code == 2 and "invalid choice: 'ppo'" in capsys.readouterr().err
    with pytest.raises(UserError, match="kind: 'ppo'"):
        prepare_run("ppo", "configs/paper/grpo_qwen2.5_math_1.5b.yaml", [], ClusterSettings(), "t")


def test_validation_catches_a_broken_object(crd_schema):
    _, job = render_objects(grpo_run())
    broken = copy.deepcopy(job)
    broken["spec"]["template"]["spec"]["containers"][0]["resourcez"] = {}
    assert any("resourcez" in p for p in validate_objects([broken], "1.33", None))
    pytorchjob = render_objects(grpo_run(load_settings("configs/cluster/multi-node.yaml")))[1]
    pytorchjob["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = "one"
    assert any("replicas" in p for p in validate_objects([pytorchjob], "1.33", crd_schema))


def test_dry_run_prints_yaml_and_sends_nothing(capsys, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", "/nonexistent/kubeconfig")
    assert main(["submit", "eval", "--config", "configs/paper/eval_qwen2.5_math_1.5b_math500.yaml",
                 "--image-tag", "t", "--dry-run"]) == 0
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert [d["kind"] for d in docs] == ["ConfigMap", "Job", "Job"]
    assert docs[1]["spec"]["completionMode"] == "Indexed" and docs[1]["spec"]["completions"] == 4


def test_dockerfile_passes_hadolint():
    hadolint = os.path.join(os.path.dirname(sys.executable), "hadolint")
    proc = subprocess.run([hadolint, str(ROOT / "images" / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _pypi_reachable() -> bool:
    proc = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "trl"], capture_output=True, timeout=60)
    return proc.returncode == 0


@pytest.mark.slow
def test_image_requirements_resolve_for_cuda():
    if not _pypi_reachable():
        pytest.skip("PyPI is not reachable from here")
    proc = subprocess.run([sys.executable, str(ROOT / "images" / "check_resolves.py")], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "torch==2.13.0" in proc.stdout and "vllm==0.31.0" in proc.stdout


@pytest.mark.parametrize("kind,config,shards", [
    ("eval", "configs/paper/eval_qwen2.5_math_1.5b_math500.yaml", 4),
    ("generate", "configs/paper/generate_qwq32b_for_qwen2.5_math_1.5b.yaml", 16),
])
def test_sampling_runs_as_an_indexed_job_and_a_merge_job(kind, config, shards):
    """Eval and teacher sampling (issue 12): one pod per shard of an Indexed Job, then `<kind>-merge`."""
    settings = load_settings("configs/cluster/single-node.yaml")
    _, job, merge_job = render_objects(prepare_run(kind, config, [], settings, "t1"))
    assert (job["spec"]["completionMode"], job["spec"]["completions"]) == ("Indexed", shards)
    [worker] = job["spec"]["template"]["spec"]["containers"]
    assert worker["command"][:2] == ["rlvsdistill", kind]
    [merger] = merge_job["spec"]["template"]["spec"]["containers"]
    assert merger["command"][:2] == ["rlvsdistill", f"{kind}-merge"]
    assert "nvidia.com/gpu" not in merger["resources"].get("limits", {})  # the merge needs no GPU
