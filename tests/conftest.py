"""Shared fixtures: paths to ../shared and one grading pool per test session."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
MATH500 = SHARED / "data" / "math500" / "test.jsonl"
GRADED = SHARED / "data" / "graded-responses"


@pytest.fixture(scope="session")
def pool():
    from rlvsdistill.grading import GraderPool

    with GraderPool(item_timeout=10) as p:
        yield p


def need(path: Path) -> Path:
    """Skip (with the reason shown) when a shared file is absent, e.g. on a clone without ../shared."""
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """The tiny random Qwen2 model and tokenizer (issue 3's `tiny-model`), built once per session."""
    from rlvsdistill.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def vllm_model(tmp_path_factory):
    """The tiny model at hidden 128 (head size 32): vLLM's CPU attention needs a head size of at least 32."""
    from rlvsdistill.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-vllm") / "model", hidden_size=128)


# vLLM's CPU build reserves this fraction of RAM (its GPU memory setting); 0.9 fails on a shared machine.
VLLM_CPU_MEMORY = 0.15


def write_yaml(path, values: dict):
    import yaml

    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def run_cli(*args, env=None, timeout=600, cwd=None):
    """Run `python -m rlvsdistill ...` (or another module with -m in args) in a subprocess; returns it completed."""
    import os
    import subprocess
    import sys

    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                          env=full_env, cwd=cwd or ROOT)


def kill_shard_after_first_part(command: str, cfg_path, shard, timeout: float = 600) -> None:
    """Start ``rlvsdistill COMMAND --config CFG shard_index=0``, SIGKILL it once its first part is written, and
    check that the shard was left unfinished (a pod killed midway)."""
    import signal
    import subprocess
    import sys
    import time

    cmd = [sys.executable, "-m", "rlvsdistill", command, "--config", str(cfg_path), "shard_index=0"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while not (shard / "part-00000.jsonl").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the shard ended before its first part"
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (shard / ".complete").exists()  # killed midway


CPU = {"use_cpu": True, "bf16": False, "report_to": "none", "seed": 0, "dataloader_num_workers": 0}


def sft_values(model, data, out, **extra):
    """An SFT config for the tiny model on CPU."""
    return {"model_name_or_path": str(model), "dataset_name": str(data), "output_dir": str(out),
            "completion_only_loss": True, "max_length": 128, "per_device_train_batch_size": 6,
            "learning_rate": 3e-3, "lr_scheduler_type": "constant", "max_steps": 40, "logging_steps": 5,
            "save_steps": 20, **CPU, **extra}


@pytest.fixture(scope="session")
def sevens(tmp_path_factory):
    """A synthetic problem set whose every answer is 7, and SFT data teaching the answer `\\boxed{7}`."""
    import json

    d = tmp_path_factory.mktemp("sevens")
    problems = [{"unique_id": f"p{i}", "problem": f"Add {i % 8} and {7 - i % 8}.", "answer": "7",
                 "level": 1 + i % 3, "subject": ["Algebra", "Prealgebra"][i % 2]} for i in range(24)]
    (d / "problems.jsonl").write_text("".join(json.dumps(p) + "\n" for p in problems))
    (d / "sft.jsonl").write_text("".join(
        json.dumps({"prompt": p["problem"], "completion": " The answer is \\boxed{7}."}) + "\n" for p in problems))
    return d


@pytest.fixture(scope="session")
def teacher(tmp_path_factory, tiny_model, sevens):
    """The tiny model after a few dozen real SFT steps on `\\boxed{7}` answers (also the SFT test's run)."""
    from rlvsdistill.config import load_config
    from rlvsdistill.train.sft import main

    d = tmp_path_factory.mktemp("teacher")
    cfg = load_config("sft", write_yaml(d / "sft.yaml", sft_values(tiny_model, sevens / "sft.jsonl", d / "out")))
    main(cfg)
    return d / "out"


# ---------------------------------------------------------------------------------------------------------
# A real control plane (tests/controlplane.py), started once per session by the tests that ask for it
# ---------------------------------------------------------------------------------------------------------

GPU_NODES = ("gpu-node-0", "gpu-node-1")
_CONTROL_PLANE_START = []


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory):
    """etcd + apiserver + controller-manager + scheduler on loopback, two fake 8-GPU nodes, the PyTorchJob CRD.
    Skips (saying why) where no binaries exist; every process group is killed at the end, even on failure."""
    from controlplane import ControlPlane, Unavailable, find_binaries

    import time

    t0 = time.monotonic()
    root = tmp_path_factory.mktemp("controlplane")
    try:
        bindir = find_binaries(SHARED / "k8s" / "bin", root / "bin")
    except Unavailable as exc:
        pytest.skip(f"no Kubernetes control plane: {exc}")
    cp = ControlPlane(bindir, root)
    try:
        try:
            cp.start()
        except Unavailable as exc:  # e.g. no openssl
            pytest.skip(f"no Kubernetes control plane: {exc}")
        for node in GPU_NODES:
            cp.add_gpu_node(node)
        cp.install_crd(need(SHARED / "k8s" / "crds" / "kubeflow.org_pytorchjobs.yaml"))
        _CONTROL_PLANE_START.append((time.monotonic() - t0, cp.started_in))
        yield cp
    finally:
        cp.stop()


def pytest_terminal_summary(terminalreporter):
    for total, processes in _CONTROL_PLANE_START:
        terminalreporter.write_line(f"control plane fixture: {total:.1f}s (unpack, certificates, nodes, CRD); "
                                    f"etcd + apiserver + controller-manager + scheduler ready in {processes:.1f}s")


def pytest_ignore_collect(collection_path, config):
    """tests/e2e (a real node, the built image; `make e2e`) runs only when a path into it is given."""
    e2e = ROOT / "tests" / "e2e"
    if collection_path != e2e:
        return None
    asked = any(Path(a.split("::")[0]).resolve().is_relative_to(e2e) for a in config.args)
    return None if asked else True
