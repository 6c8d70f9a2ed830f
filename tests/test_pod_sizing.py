"""Pods sized to their work: grader workers from the pod's CPU request (Downward API), cgroup quota or affinity,
divided by its ranks; one pool per rank, reused; the merge pod's memory, which its merge fits."""

import math
import os
import sys

import pytest

from conftest import ROOT, write_yaml
from rlvsdistill import grading
from rlvsdistill.cluster.render import prepare_run, render_objects
from rlvsdistill.cluster.settings import ClusterSettings
from rlvsdistill.config import load_config
from rlvsdistill.grading import CPU_REQUEST_ENV, GraderPool, default_workers, pod_cpus
from rlvsdistill.io import UserError

sys.path.insert(0, str(ROOT / "tests" / "benchmarks"))
from bench_scale import measure, new_command, synthesize  # noqa: E402


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    monkeypatch.delenv(CPU_REQUEST_ENV, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(grading, "CGROUP_ROOT", tmp_path / "no-cgroup")
    monkeypatch.chdir(ROOT)


def downward_api_env(container: dict) -> dict[str, str]:
    """The env a kubelet gives ``container``: plain values, and resourceFieldRef requests.cpu resolved the way
    Kubernetes does (the quantity divided by the divisor, rounded up)."""
    def cpus(quantity: str) -> float:
        return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)

    env = {}
    for var in container["env"]:
        ref = var.get("valueFrom", {}).get("resourceFieldRef")
        if ref:
            kind, resource = ref["resource"].split(".")
            value = container["resources"][kind][resource]
            env[var["name"]] = str(math.ceil(cpus(value) / cpus(ref.get("divisor", "1"))))
        elif "value" in var:
            env[var["name"]] = var["value"]
    return env


def _job(objects):
    """The first Job of a run (after its ConfigMap and NetworkPolicy)."""
    return next(o for o in objects if o["kind"] == "Job")


def test_a_7_rank_grpo_pod_with_56_cpus_starts_8_workers_per_rank(monkeypatch):
    settings = ClusterSettings(grpo_gpus_per_node=8, vllm_gpus=1, cpu_per_gpu=8)
    run = prepare_run("grpo", "configs/paper/grpo_qwen2.5_math_1.5b.yaml", [], settings, "registry.example.org/team/rlvsdistill:t1")
    trainer = _job(render_objects(run))["spec"]["template"]["spec"]["containers"][0]
    env = downward_api_env(trainer)
    assert env[CPU_REQUEST_ENV] == "56"
    ranks = trainer["command"][trainer["command"].index("--num_processes") + 1]
    monkeypatch.setenv(CPU_REQUEST_ENV, env[CPU_REQUEST_ENV])
    monkeypatch.setenv("LOCAL_WORLD_SIZE", ranks)  # what accelerate launch sets in each of the 7 ranks
    assert ranks == "7" and default_workers() == 8


def test_an_eval_shard_pod_with_8_cpus_starts_8_workers(monkeypatch):
    run = prepare_run("eval", "configs/paper/eval_qwen2.5_math_1.5b_math500.yaml", [],
                      ClusterSettings(cpu_per_gpu=8), "registry.example.org/team/rlvsdistill:t1")
    shard = _job(render_objects(run))["spec"]["template"]["spec"]["containers"][0]
    monkeypatch.setenv(CPU_REQUEST_ENV, downward_api_env(shard)[CPU_REQUEST_ENV])
    assert default_workers() == 8


def test_cpus_from_cgroup_quota_else_affinity(monkeypatch, tmp_path):
    affinity = len(os.sched_getaffinity(0))
    assert pod_cpus() == affinity  # no request, no cgroup
    v2 = tmp_path / "v2"
    v2.mkdir()
    monkeypatch.setattr(grading, "CGROUP_ROOT", v2)
    (v2 / "cpu.max").write_text("max 100000\n")  # no quota
    assert pod_cpus() == affinity
    (v2 / "cpu.max").write_text("250000 100000\n")  # 2.5 CPUs
    assert pod_cpus() == 3
    v1 = tmp_path / "v1"
    (v1 / "cpu,cpuacct").mkdir(parents=True)
    (v1 / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("1200000\n")
    (v1 / "cpu,cpuacct" / "cpu.cfs_period_us").write_text("100000\n")
    monkeypatch.setattr(grading, "CGROUP_ROOT", v1)
    assert pod_cpus() == 12
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "5")
    assert default_workers() == 2
    monkeypatch.setenv(CPU_REQUEST_ENV, "4")  # the request wins over the quota
    assert pod_cpus() == 4 and default_workers() == 1  # never below 1
    monkeypatch.setenv(CPU_REQUEST_ENV, "four")
    with pytest.raises(UserError, match=f"{CPU_REQUEST_ENV}='four' is not a number of CPUs"):
        pod_cpus()


def test_each_rank_starts_its_pool_once_and_reuses_it(monkeypatch):
    from rlvsdistill.rewards import accuracy_reward

    monkeypatch.setenv(CPU_REQUEST_ENV, "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setattr(grading, "_shared_pool", None)
    reward = accuracy_reward()
    try:
        assert reward(["\\boxed{2}", "\\boxed{3}"], ["2", "2"]) == [1.0, -1.0]
        pool = grading._shared_pool
        pids = [w.process.pid for w in pool._workers]
        assert pool.n_workers == 1 and len(pids) == 1
        assert reward(["\\boxed{5}"], ["5"]) == [1.0]
        assert grading.shared_pool() is pool and [w.process.pid for w in pool._workers] == pids
    finally:
        if grading._shared_pool is not None:
            grading._shared_pool.close()


@pytest.mark.parametrize("kind,config", [("grpo", "configs/paper/grpo_qwen2.5_math_1.5b.yaml"),
                                         ("eval", "configs/paper/eval_qwen2.5_math_1.5b_math500.yaml")])
def test_grader_workers_overrides_and_zero_is_refused(kind, config):
    with pytest.raises(UserError, match=r"grader_workers: 0 must be a positive integer"):
        load_config(kind, config, ["grader_workers=0", "bf16=false", "use_cpu=true"] if kind == "grpo"
                    else ["grader_workers=0"])
    with pytest.raises(UserError, match=r"grader workers: 0 must be at least 1"):
        GraderPool(workers=0)


def test_eval_with_zero_grader_workers_exits_2_and_writes_nothing(tmp_path, tiny_model, sevens):
    from conftest import run_cli

    out = tmp_path / "run"
    cfg = write_yaml(tmp_path / "eval.yaml", {"model_name_or_path": str(tiny_model), "backend": "hf",
                                              "dataset_name": str(sevens / "problems.jsonl"),
                                              "output_dir": str(out), "grader_workers": 0})
    result = run_cli("-m", "rlvsdistill", "eval", "--config", str(cfg))
    assert result.returncode == 2 and "grader_workers: 0 must be a positive integer" in result.stderr
    assert not out.exists()


def test_the_merge_of_the_benchmark_data_fits_the_rendered_merge_pod(tmp_path):
    values = synthesize(tmp_path, 400, 64, shards=4)  # the benchmark's data, at a size CI can afford
    config = write_yaml(tmp_path / "eval.yaml", values)
    rendered = {**values, "dataset_name": "math_train", "output_dir": "run"}  # on the cluster: 7,500 problems budgeted
    run = prepare_run("eval", str(write_yaml(tmp_path / "render.yaml", rendered)), [], ClusterSettings(), "registry.example.org/team/rlvsdistill:t1")
    merge_job = render_objects(run)[-1]
    resources = merge_job["spec"]["template"]["spec"]["containers"][0]["resources"]
    limit = resources["limits"]["memory"]
    assert limit.endswith("Mi") and resources["requests"]["memory"] == limit
    result = measure(new_command(config))
    assert result["rc"] == 0, result["stderr"]
    assert result["rss"] < int(limit[:-2]) * 2**20, (result["rss"] / 2**20, limit)
