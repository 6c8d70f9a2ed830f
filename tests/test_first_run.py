"""Issue 17: the first-run defects a platform engineer would hit, one test per item (item 10 is read, not run).

The control-plane tests use tests/controlplane.py through test_submit's `ns` fixture; the multi-node ones the
two-process-group harness of tests/test_multinode.py. Neither has the training operator nor a kubelet: what
stands in for them is named where it happens.
"""

import dataclasses
import json
import sys
import threading
import time

import pytest
import yaml

from conftest import ROOT, run_cli
from rlvsdistill.cli import main
from rlvsdistill.cluster.examples import EXAMPLES
from rlvsdistill.cluster.render import prepare_run, render_objects
from rlvsdistill.cluster.settings import ClusterSettings, load_settings
from rlvsdistill.cluster.jobwatch import wait_for_shards
from rlvsdistill.launch import GIVE_UP, RETRYABLE
from test_cluster import pod_specs
from test_submit import MULTI_NODE_BATCH, cluster_file, merge_reader, ns, submit_args, wait_until  # noqa: F401

IMAGE = "registry.example.org/team/rlvsdistill:t1"


def every_workload(**settings):
    """Every example's workloads (and each model's prefetch Job), rendered with ``settings`` changed."""
    for kind, config, cluster, overrides in EXAMPLES.values():
        s = dataclasses.replace(load_settings(str(ROOT / cluster)), **settings)
        runs = [prepare_run(kind, config, overrides, s, IMAGE)]
        if kind != "smoke":
            runs.append(prepare_run(kind, config, overrides, dataclasses.replace(s, model_cache_pvc="models"), IMAGE,
                                    prefetch=True))
        for run in runs:
            yield from (o for o in render_objects(run) if o["kind"] in ("Job", "PyTorchJob"))


@pytest.fixture(autouse=True)
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)


# -- item 1: a deterministic failure ends the run ----------------------------------------------------------


def launch(root, *command, max_attempts=2):
    return run_cli("-m", "rlvsdistill", "launch", "--max-attempts", str(max_attempts), "--output-dir", "out", "--",
                   *command, env={"RLVSDISTILL_ROOT": str(root), "RLVSDISTILL_RUN": "r", "RANK": "0"})


def test_item1_launch_gives_up_after_max_attempts_without_a_new_checkpoint(tmp_path):
    fail = [sys.executable, "-c", "import sys; sys.exit(1)"]
    assert launch(tmp_path, *fail).returncode == RETRYABLE  # attempt 1: the operator recreates the pod
    proc = launch(tmp_path, *fail)
    assert proc.returncode == GIVE_UP and "attempt 2 of 2 without a new checkpoint" in proc.stderr  # permanent
    (tmp_path / "out" / "checkpoint-5").mkdir(parents=True)
    (tmp_path / "out" / "checkpoint-5" / ".complete").write_text("ok\n")
    assert launch(tmp_path, *fail).returncode == RETRYABLE  # progress since: the count starts over
    assert launch(tmp_path, sys.executable, "-c", "pass").returncode == 0
    assert not (tmp_path / ".launch" / "r" / "attempts-rank0.json").exists()  # success clears it


def test_item1_every_workload_has_an_active_deadline_from_the_settings(tmp_path):
    for obj in every_workload(active_deadline_seconds=90000):
        spec = obj["spec"]["runPolicy"] if obj["kind"] == "PyTorchJob" else obj["spec"]
        expected = 3600 if obj["metadata"]["name"] == "smoke" else 90000  # the smoke Job keeps its own hour
        assert spec["activeDeadlineSeconds"] == expected, obj["metadata"]["name"]
    with pytest.raises(Exception, match="active_deadline_seconds: 3600 must exceed merge_wait_seconds"):
        load_settings(str(cluster_file(tmp_path, active_deadline_seconds=3600)))


@pytest.mark.slow
def test_item1_a_deterministic_failure_fails_the_pytorchjob_after_bounded_attempts(tmp_path, tiny_model, sevens):
    """The rendered Master and Worker commands, with a model whose config is broken (every start fails the same
    way): each pod exits retryable (the operator recreates it) until the last attempt, which exits 1, the
    ExitCode policy's permanent range: the operator then marks the PyTorchJob Failed (the operator itself is
    not here; its rule is restartPolicy ExitCode's, kubeflow/trainer pkg/controller.v1/common/pod.go)."""
    from test_multinode import Pods, render_multinode

    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    config_map, job = render_multinode(tmp_path, tiny_model, sevens, max_steps=2, model_name_or_path=str(broken))
    assert job["spec"]["runPolicy"]["backoffLimit"] == 3 and job["spec"]["runPolicy"]["activeDeadlineSeconds"]
    command = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--max-attempts") + 1] == "4"  # backoffLimit + 1 starts
    # Two attempts are enough to show the rule: the harness's pods are told max 2 (the rest as rendered).
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        cmd = replica["template"]["spec"]["containers"][0]["command"]
        cmd[cmd.index("--max-attempts") + 1] = "2"
    pods = Pods(tmp_path, config_map, job)
    codes = []
    try:
        for _ in range(2):
            pods.start()
            codes.append(pods.wait(timeout=600))
    finally:
        pods.kill_all()
    assert codes == [{"Master": RETRYABLE, "Worker": RETRYABLE}, {"Master": GIVE_UP, "Worker": GIVE_UP}], \
        pods.log("Master")[-3000:]
    assert "the PyTorchJob fails" in pods.log("Master")


def test_item1_the_deadline_reaches_the_server_in_the_pytorchjob(ns):
    from kubernetes import client

    assert main(submit_args(ns, "grpo", "configs/paper/grpo_qwen2.5_3b.yaml", name="pt")) == 0
    job = client.CustomObjectsApi(ns.api).get_namespaced_custom_object("kubeflow.org", "v1", ns.name,
                                                                       "pytorchjobs", "pt")
    assert job["spec"]["runPolicy"]["activeDeadlineSeconds"] == ClusterSettings().active_deadline_seconds


# -- item 2: image pull secrets ----------------------------------------------------------------------------


def test_item2_image_pull_secrets_reach_every_pod(tmp_path):
    seen = set()
    for obj in every_workload(image_pull_secrets=["regcred", "mirror"]):
        for spec in pod_specs(obj):
            assert spec["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror"}], obj["metadata"]["name"]
            seen |= {c["name"] for c in spec["containers"] + spec.get("initContainers", [])}
    assert {"trainer", "pytorch", "vllm", "eval", "generate", "merge", "prefetch", "smoke"} <= seen
    with pytest.raises(Exception, match="image_pull_secrets: 'regcred' is not a list of Secret names"):
        load_settings(str(cluster_file(tmp_path, image_pull_secrets="regcred")))


def test_item2_the_pods_created_carry_the_pull_secret(ns, tmp_path):
    cluster = cluster_file(tmp_path, image_pull_secrets=["regcred"])
    assert main(submit_args(ns, "eval", "configs/paper/eval_qwen2.5_math_1.5b_math500.yaml", cluster, "ev")) == 0
    pods = wait_until(lambda: (p := ns.pods("rlvsdistill.io/run=ev")) and len(p) == 5 and p, 120, "5 pods")
    assert {tuple(s.name for s in p.spec.image_pull_secrets) for p in pods} == {("regcred",)}  # merge included


# -- item 3: the rendezvous does not wait for vLLM ---------------------------------------------------------


def test_item3_master_endpoints_are_published_before_the_sidecar_has_loaded(ns):
    """The Master pod as the operator makes it, and the operator's headless Service for it; the real endpoint
    controllers publish its address once the pod is Ready. A stand-in for the kubelet reports the containers
    started, the sidecar's model not loaded yet, and the pod's Ready condition by the kubelet's rule (every
    container ready; one without a readiness probe is ready once started; a probed one only once it passes)."""
    from rlvsdistill.cluster.render import prepare_run

    run = prepare_run("grpo", "configs/paper/grpo_qwen2.5_3b.yaml", MULTI_NODE_BATCH["grpo"],
                      load_settings("configs/cluster/multi-node.yaml"), IMAGE, name="pt")
    master = render_objects(run)[-1]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    labels = {**master["metadata"]["labels"], "training.kubeflow.org/job-name": "pt",
              "training.kubeflow.org/replica-type": "master", "training.kubeflow.org/replica-index": "0"}
    spec = {**master["spec"], "restartPolicy": "Never"}
    ns.core.create_namespaced_pod(ns.name, {"metadata": {"name": "pt-master-0", "labels": labels}, "spec": spec})
    ns.core.create_namespaced_service(ns.name, {"metadata": {"name": "pt-master-0"}, "spec": {
        "clusterIP": "None", "selector": {"training.kubeflow.org/job-name": "pt",
                                          "training.kubeflow.org/replica-type": "master",
                                          "training.kubeflow.org/replica-index": "0"},
        "ports": [{"name": "pytorchjob-port", "port": 23456}]}})  # what training-operator v1.9 creates
    pod = wait_until(lambda: (p := ns.core.read_namespaced_pod("pt-master-0", ns.name)).spec.node_name and p, 120,
                     "the Master pod bound")
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def status(c, probe_passed: bool):
        ready = c.readiness_probe is None or probe_passed  # the kubelet's rule for a started container
        return {"name": c.name, "image": c.image, "imageID": "", "ready": ready, "started": True,
                "restartCount": 0, "state": {"running": {"startedAt": now}}}

    containers = [status(c, True) for c in pod.spec.containers]
    sidecars = [status(c, False) for c in pod.spec.init_containers]  # vLLM still loading the model
    ready = all(s["ready"] for s in containers + sidecars)
    ns.core.patch_namespaced_pod_status("pt-master-0", ns.name, {"status": {
        "phase": "Running", "podIP": "10.244.0.5", "podIPs": [{"ip": "10.244.0.5"}],
        "containerStatuses": containers, "initContainerStatuses": sidecars,
        "conditions": [{"type": t, "status": "True" if ready else "False", "lastTransitionTime": now}
                       for t in ("Ready", "ContainersReady")] + [
                       {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                       {"type": "PodScheduled", "status": "True", "lastTransitionTime": now}]}})
    assert [c.readiness_probe for c in pod.spec.init_containers] == [None]  # no probe gates the Master's readiness
    endpoints = wait_until(lambda: (e := ns.core.read_namespaced_endpoints("pt-master-0", ns.name)).subsets and e,
                           120, "the Master Service's endpoints")
    assert [a.ip for a in endpoints.subsets[0].addresses or []] == ["10.244.0.5"]  # MASTER_ADDR resolves


# -- item 4: logs -f follows a recreated pod of the same name -----------------------------------------------


def test_item4_logs_follow_a_pod_recreated_under_the_same_name(ns):
    from rlvsdistill.cluster.submit import Cluster, logs
    from test_submit import GPU_NODES, logs_stand_in

    kubelet = logs_stand_in(ns)
    from kubernetes import client

    assert main(submit_args(ns, name="pt")) == 0  # a multi-node SFT PyTorchJob; no operator runs it
    custom = client.CustomObjectsApi(ns.api)
    job = custom.get_namespaced_custom_object("kubeflow.org", "v1", ns.name, "pytorchjobs", "pt")
    template = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def operator_makes_master(phase):  # the operator's pod; the kubelet stand-in reports it run
        ns.core.create_namespaced_pod(ns.name, {"metadata": {"name": "pt-master-0", "labels": template["metadata"][
            "labels"]}, "spec": {**template["spec"], "restartPolicy": "Never", "nodeName": GPU_NODES[0]}})
        state = {"running": {"startedAt": now}} if phase == "Running" else {"terminated": {
            "exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}}
        ns.core.patch_namespaced_pod_status("pt-master-0", ns.name, {"status": {"phase": phase, "containerStatuses": [
            {"name": "pytorch", "image": IMAGE, "imageID": "", "ready": False, "restartCount": 0, "state": state}]}})

    operator_makes_master("Running")
    out, done = __import__("io").StringIO(), threading.Event()
    follower = threading.Thread(target=lambda: (logs("pt", Cluster(ns.name), follow=True, out=out, poll_seconds=0.3),
                                                done.set()), daemon=True)
    follower.start()
    wait_until(lambda: out.getvalue().count("step 3/3") == 1, 120, "the first pod's log")
    ns.core.delete_namespaced_pod("pt-master-0", ns.name, grace_period_seconds=0)  # exit 143: recreated
    wait_until(lambda: not ns.pods("rlvsdistill.io/run=pt"), 120, "the first pod gone")
    time.sleep(1)  # the gap before the operator recreates it: logs -f keeps waiting (the PyTorchJob runs)
    assert not done.is_set()
    operator_makes_master("Succeeded")
    wait_until(lambda: out.getvalue().count("step 3/3") == 2, 120, "the recreated pod's log")
    custom.patch_namespaced_custom_object_status("kubeflow.org", "v1", ns.name, "pytorchjobs", "pt", {"status": {
        "conditions": [{"type": "Succeeded", "status": "True", "reason": "PyTorchJobSucceeded"}]}})  # as the operator
    wait_until(done.is_set, 120, "logs -f to end once the PyTorchJob succeeded")
    lines = out.getvalue().splitlines()
    assert lines == [f"[pt-master-0] pytorch: step {s}/3" for s in (1, 2, 3)] * 2  # both pods' logs
    kubelet.httpd.shutdown()


# -- item 5: the merge rides out an API server restart ------------------------------------------------------


def test_item5_merge_retries_while_the_api_server_is_down(ns, tmp_path):
    from rlvsdistill.paths import mark_complete, shard_dir

    assert main(submit_args(ns, "eval", "configs/paper/eval_qwen2.5_math_1.5b_math500.yaml",
                            "configs/cluster/single-node.yaml", name="ev", overrides=["num_shards=2"])) == 0
    reader, run_dir = merge_reader(ns, "ev", tmp_path), tmp_path / "run"
    result, errors = [], []

    def merge_waits():
        try:
            result.append(wait_for_shards(run_dir, 2, wait_seconds=600, reader=reader, poll_seconds=0.2))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    waiter = threading.Thread(target=merge_waits, daemon=True)
    waiter.start()
    time.sleep(1)
    args = ns.cp.stop_apiserver()
    try:
        time.sleep(4)  # connection refused, several times
        assert waiter.is_alive() and not errors, errors
    finally:
        ns.cp.start_apiserver(args)
    for i in range(2):  # the shards finish meanwhile, as their pods would
        shard = shard_dir(run_dir, i, 2)
        shard.mkdir(parents=True)
        mark_complete(shard)
    waiter.join(60)
    assert not errors and result == [[]]


# -- items 6 and 8: what a pod asks of a node, refused before anything is sent -------------------------------


def test_item6_pods_request_the_node_disk_their_caches_may_fill():
    for obj in every_workload(hf_cache_size="300Gi"):
        for spec in pod_specs(obj):
            assert spec["containers"][0]["resources"]["requests"]["ephemeral-storage"] == "308Gi"  # /cache + /tmp


@pytest.mark.parametrize("setting,short,fits", [
    ({"memory_per_gpu": "400Gi"}, "memory", "3200Gi memory"),  # 8 x 400Gi on nodes of 2Ti
    ({"cpu_per_gpu": 20}, "cpu", "160 cpu"),  # 8 x 20 CPUs on nodes of 128
    ({"hf_cache_size": "3Ti"}, "ephemeral-storage", "3080Gi ephemeral-storage"),  # /cache on 2Ti of disk
])
def test_item6_item8_a_pod_no_node_can_hold_is_refused_naming_the_size_that_fits(ns, tmp_path, capsys, setting,
                                                                                   short, fits):
    cluster = cluster_file(tmp_path, **setting)
    assert main(submit_args(ns, "grpo", "configs/paper/grpo_qwen2.5_math_1.5b.yaml", cluster, "g")) == 2
    err = capsys.readouterr().err
    assert f"no node of 2 has that much {short}" in err and fits in err and "would fit it" in err, err
    assert ns.batch.list_namespaced_job(ns.name, label_selector="rlvsdistill.io/run=g").items == []


# -- item 7: log_completions ---------------------------------------------------------------------------------


def test_item7_log_completions_without_a_bound_is_refused(capsys, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", "/nonexistent/kubeconfig")
    args = ["submit", "grpo", "--config", "configs/paper/grpo_qwen2.5_math_1.5b.yaml", "--registry",
            "registry.example.org/team", "--image-tag", "t", "--dry-run"]
    assert main(args + ["num_completions_to_print=null"]) == 2
    assert "log_completions: true prints every completion of each logging step" in capsys.readouterr().err
    assert main(args) == 0  # the paper configs print 2 a step
    config = next(d for d in yaml.safe_load_all(capsys.readouterr().out) if d and d["kind"] == "ConfigMap")
    assert yaml.safe_load(config["data"]["config.yaml"])["num_completions_to_print"] == 2


# -- item 9: the volume's claim -------------------------------------------------------------------------------


def test_item9_a_claim_that_is_not_read_write_many_is_refused(ns, tmp_path, capsys, caplog):
    ns.core.create_namespaced_persistent_volume_claim(ns.name, {"metadata": {"name": "rwo"}, "spec": {
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Ti"}}}})  # the default class
    cluster = cluster_file(tmp_path, pvc="rwo")
    assert main(submit_args(ns, cluster=cluster)) == 2
    err = capsys.readouterr().err
    assert f"PersistentVolumeClaim {ns.name}/rwo (storageClassName: the default class) has access modes " \
           "ReadWriteOnce, not ReadWriteMany" in err
    assert ns.batch.list_namespaced_job(ns.name).items == []
    ns.core.create_namespaced_persistent_volume_claim(ns.name, {"metadata": {"name": "rwx"}, "spec": {
        "accessModes": ["ReadWriteMany"], "storageClassName": "no-such-class",
        "resources": {"requests": {"storage": "1Ti"}}}})  # nothing provisions it: Pending
    assert main(submit_args(ns, cluster=cluster_file(tmp_path, pvc="rwx"))) == 0
    assert f"{ns.name}/rwx (storageClassName: no-such-class) is Pending, not Bound" in caplog.text


# -- item 10: the fabric settings NCCL needs beyond TCP ------------------------------------------------------


def test_item10_fabric_settings_reach_the_training_pods_only(tmp_path):
    fabric = {"fabric_resources": {"vpc.amazonaws.com/efa": 4}, "fabric_env": {"FI_PROVIDER": "efa"},
              "fabric_annotations": {"k8s.v1.cni.cncf.io/networks": "efa"}}
    trained = 0
    for obj in every_workload(**fabric):
        for template in ([obj["spec"]["template"]] if obj["kind"] == "Job" else
                         [r["template"] for r in obj["spec"]["pytorchReplicaSpecs"].values()]):
            trainer = template["spec"]["containers"][0]
            training = trainer["name"] in ("trainer", "pytorch")
            trained += training
            assert (trainer["resources"]["limits"].get("vpc.amazonaws.com/efa") == "4") == training
            assert ({"name": "FI_PROVIDER", "value": "efa"} in trainer["env"]) == training
            assert ("k8s.v1.cni.cncf.io/networks" in template["metadata"]["annotations"]) == training
    assert trained >= 6  # GRPO and SFT Jobs, the PyTorchJobs' Masters and Workers
    with pytest.raises(Exception, match="fabric_resources: .* is not a mapping of names to positive integers"):
        load_settings(str(cluster_file(tmp_path, fabric_resources={"rdma/ib": "many"})))
