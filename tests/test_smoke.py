"""`rlvsdistill smoke` (make gpu-check) and the smoke Job (make submit-smoke): the refusal without a GPU, the
GPU-free step, the step plan's configs, and the Job built from the same steps. The GPU run itself is the `gpu`
test at the end, which runs only where CUDA is."""

import os
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, SHARED
from rlvsdistill import smoke
from rlvsdistill.cluster.render import SMOKE_INIT_STEPS, SMOKE_STEPS, prepare_run, render_objects
from rlvsdistill.cluster.settings import load_settings
from rlvsdistill.cluster.validate import crd_schema_from_file, validate_objects
from rlvsdistill.config import check_values

IMAGE = "registry.example.org/team/rlvsdistill:t"


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(_has_cuda(), reason="a CUDA GPU is visible: the real check runs in test_gpu_check_passes")
def test_gpu_check_refuses_without_a_gpu(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RLVSDISTILL_ROOT": str(tmp_path)}
    proc = subprocess.run(["make", "-s", "gpu-check"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    assert "SMOKE FAIL: no CUDA GPU is visible here" in proc.stdout
    assert list(tmp_path.iterdir()) == []  # nothing was run, nothing written


def test_the_init_containers_step_needs_no_gpu(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RLVSDISTILL_ROOT": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "rlvsdistill", "smoke", "--out", "job", "--steps", "tiny-model"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1].startswith("SMOKE PASS: tiny-model")
    config = yaml.safe_load((tmp_path / "job" / "model" / "config.json").read_text())
    assert config["hidden_size"] // config["num_attention_heads"] == 64  # a head size vLLM's kernels support


def _plan(tmp_path, gpus=2, vllm=True, **options):
    opts = smoke.SmokeOptions(**options)
    steps, skipped = smoke.default_steps(opts, gpus, vllm_installed=vllm)
    return {s.name: s for s in smoke.plan(opts, tmp_path, gpus, steps, ROOT / "configs")}, skipped


def test_default_steps_skip_what_the_machine_cannot_run_and_say_why():
    opts = smoke.SmokeOptions()
    assert smoke.default_steps(opts, 2, vllm_installed=True) == (list(smoke.STEPS), {})
    steps, skipped = smoke.default_steps(opts, 1, vllm_installed=True)
    assert "grpo-vllm-server" not in steps and "2 GPUs" in skipped["grpo-vllm-server"]
    steps, skipped = smoke.default_steps(opts, 4, vllm_installed=False)
    assert steps == ["tiny-model", "sft-zero3", "grpo-hf", "eval"] and set(skipped) == set(smoke.VLLM_STEPS)
    with_sidecar = smoke.SmokeOptions(vllm_server_host="127.0.0.1")
    assert "grpo-vllm-server" in smoke.default_steps(with_sidecar, 1, vllm_installed=True)[0]


def test_every_steps_config_is_valid_for_its_entrypoint(tmp_path):
    steps, _ = _plan(tmp_path)
    kinds = {"sft-zero3": "sft", "grpo-hf": "grpo", "grpo-vllm-colocate": "grpo", "grpo-vllm-server": "grpo",
             "eval": "eval"}
    for name, kind in kinds.items():
        step = steps[name]
        assert step.command[step.command.index("rlvsdistill") + 1] == kind
        assert check_values(kind, step.config, hardware=False) == [], name
    sft = steps["sft-zero3"]
    assert sft.config["bf16"] is True and sft.command[sft.command.index("--num_processes") + 1] == "2"
    assert str(ROOT / "configs" / "deepspeed" / "zero3.json") in sft.command  # ZeRO-3
    assert steps["grpo-hf"].config["use_vllm"] is False
    assert steps["grpo-vllm-colocate"].config["vllm_mode"] == "colocate"
    assert steps["eval"].config["model_name_or_path"] == str(tmp_path / "grpo-vllm-server" / "final")
    assert steps["eval"].config["max_problems"] == smoke.EVAL_PROBLEMS
    # No sidecar here: a server is started on the GPU after the trainer's.
    server = steps["grpo-vllm-server"]
    assert server.server[:2] == [str(os.path.join(os.path.dirname(sys.executable), "trl")), "vllm-serve"]
    # As in the pod: disjoint GPUs and a host id each, so that NCCL does not take them for one host (nccl#1529).
    assert server.env["CUDA_VISIBLE_DEVICES"] == "0,1" and server.server_env["CUDA_VISIBLE_DEVICES"] == "2"
    assert server.env["NCCL_HOSTID"].endswith("-trainer") and server.server_env["NCCL_HOSTID"].endswith("-vllm")
    assert server.env["NCCL_HOSTID"][:-len("trainer")] == server.server_env["NCCL_HOSTID"][:-len("vllm")]
    assert server.config["vllm_server_port"] == int(server.server[server.server.index("--port") + 1])


def test_checks_fail_on_missing_or_short_results(tmp_path):
    steps, _ = _plan(tmp_path, max_steps=3)
    assert "no complete checkpoint-3" in steps["grpo-hf"].check()
    assert "no " in steps["eval"].check()
    out = tmp_path / "eval"
    out.mkdir()
    (out / "summary.json").write_text('{"problems": 3}')
    assert "3 problems, expected 4" in steps["eval"].check()


def test_smoke_job_runs_the_same_steps_with_the_sidecar():
    settings = load_settings(str(ROOT / "configs" / "cluster" / "single-node.yaml"))
    config_map, policy, job = render_objects(prepare_run("smoke", None, ["max_steps=5"], settings, IMAGE))
    assert policy["kind"] == "NetworkPolicy"  # the unauthenticated vLLM port: the run's own pods only
    pod = job["spec"]["template"]["spec"]
    [trainer], [init, sidecar] = pod["containers"], pod["initContainers"]
    options = smoke.load_options(None, **yaml.safe_load(config_map["data"]["config.yaml"]))  # a valid options file
    assert options.max_steps == 5 and options.vllm_server_host == "127.0.0.1"
    assert init["command"][-2:] == ["--steps", ",".join(SMOKE_INIT_STEPS)] and "restartPolicy" not in init
    assert trainer["command"][-2:] == ["--steps", ",".join(SMOKE_STEPS)]
    assert set(SMOKE_INIT_STEPS + SMOKE_STEPS) <= set(smoke.STEPS)
    assert sidecar["restartPolicy"] == "Always"  # starts after the init container wrote the model
    assert sidecar["command"][sidecar["command"].index("--model") + 1] == options.model_name_or_path
    assert options.model_name_or_path.startswith(settings.mount_path)  # on the volume, seen by both containers
    gpus = [c["resources"]["limits"].get("nvidia.com/gpu") for c in (trainer, init, sidecar)]
    assert gpus == ["1", None, "1"]
    assert job["spec"]["backoffLimit"] == 0  # a smoke test that failed says so; it is not retried
    assert job["spec"]["activeDeadlineSeconds"] == 3600  # and it fails within the hour whatever hangs


@pytest.mark.parametrize("cluster", sorted((ROOT / "configs" / "cluster").glob("*.yaml")), ids=lambda p: p.name)
def test_smoke_job_validates(cluster):
    settings = load_settings(str(cluster))
    objects = render_objects(prepare_run("smoke", None, [], settings, IMAGE))
    crd = SHARED / "k8s" / "crds" / "kubeflow.org_pytorchjobs.yaml"
    schema = crd_schema_from_file(crd) if crd.exists() else None
    assert [o["kind"] for o in objects] == ["ConfigMap", "NetworkPolicy", "Job"]
    assert validate_objects(objects, settings.kubernetes_version, schema) == []


@pytest.mark.gpu
@pytest.mark.skipif(not _has_cuda(), reason="needs a CUDA GPU (make gpu-check on a GPU node)")
def test_gpu_check_passes(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RLVSDISTILL_ROOT": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "rlvsdistill", "smoke"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    assert proc.stdout.strip().splitlines()[-1].startswith("SMOKE PASS")
