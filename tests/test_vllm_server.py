"""The GRPO Job's vLLM sidecar for real: the rendered container's own command, started here with only the
CPU-specific overrides below, reached through TRL's VLLMClient (the trainer's client). The NCCL weight-sync group
itself needs CUDA (TRL raises NotImplementedError on CPU) and is left to `make gpu-check`."""

import os
import signal
import socket
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path

import pytest

from conftest import ROOT, VLLM_CPU_MEMORY
from rlvsdistill.cluster.render import prepare_run, render_objects
from rlvsdistill.cluster.settings import load_settings

pytestmark = [pytest.mark.vllm, pytest.mark.slow,
              pytest.mark.skipif(find_spec("vllm") is None, reason="vllm is not installed (make test installs it)")]

# vllm-cpu's CLI asks importlib.metadata for the version of "vllm", but its distribution is named "vllm-cpu";
# this sitecustomize answers for it as vLLM's own platform check does (vllm.platforms: "<vllm-cpu version>+cpu").
# The CUDA image installs the distribution "vllm" and needs nothing.
VERSION_ALIAS = '''import importlib.metadata as _m
_version = _m.version
_m.version = lambda name: _version("vllm-cpu") + "+cpu" if name == "vllm" else _version(name)
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sidecar(model: Path) -> dict:
    """The vLLM container of the GRPO Job rendered from the paper's config, for the tiny model."""
    run = prepare_run("grpo", str(ROOT / "configs/paper/grpo_qwen2.5_math_1.5b.yaml"),
                      ["global_batch_size=null", f"model_name_or_path={model}", "max_prompt_tokens=256",
                       "max_completion_length=256", "vllm_max_model_length=512"],  # the tiny model's 2048 positions
                      load_settings(str(ROOT / "configs/cluster/single-node.yaml")), "registry.example.org/r:t")
    pod = render_objects(run)[-1]["spec"]["template"]["spec"]
    return next(c for c in pod["initContainers"] if c["name"] == "vllm")


def _override(command: list[str], flag: str, value) -> None:
    assert flag in command, f"the rendered command has no {flag}"
    command[command.index(flag) + 1] = str(value)


@pytest.fixture(scope="module")
def server(vllm_model, tmp_path_factory):
    command = list(_sidecar(vllm_model)["command"])
    assert command[:2] == ["trl", "vllm-serve"]
    port = _free_port()
    # The CPU-specific overrides, and nothing else:
    _override(command, "--host", "127.0.0.1")  # 1. loopback only: nothing on this machine listens beyond it
    _override(command, "--port", port)  # 2. a free port, not the pod's 8000
    _override(command, "--gpu_memory_utilization", VLLM_CPU_MEMORY)  # 3. on CPU: a fraction of RAM
    shim = tmp_path_factory.mktemp("vllm-cpu-alias")
    (shim / "sitecustomize.py").write_text(VERSION_ALIAS)
    env = {**os.environ, "PYTHONPATH": str(shim),  # 4. vllm-cpu's distribution name (above)
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # `trl` of this venv
    log = (tmp_path_factory.mktemp("vllm-log") / "server.log").open("wb")
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc, port, command
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # the server and its engine processes
            proc.wait(60)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def client(server):
    """TRL's VLLMClient once /health answers, checked as the trainer checks it (VLLMClient.check_server)."""
    from trl.generation.vllm_client import VLLMClient

    proc, port, _ = server
    deadline = time.monotonic() + 420
    while True:
        try:
            return VLLMClient(base_url=f"http://127.0.0.1:{port}", connection_timeout=0)
        except OSError:  # requests.ConnectionError: not up yet
            assert proc.poll() is None, f"the vLLM server exited ({proc.returncode}) before /health answered"
            assert time.monotonic() < deadline, "the vLLM server was not healthy within 420 s"
            time.sleep(2)


def test_the_rendered_sidecar_serves_with_a_weight_transfer_engine(client, server):
    info = client.get_server_info()  # 404 unless the server runs with VLLM_SERVER_DEV_MODE=1 (trl vllm-serve sets it)
    assert info["weight_transfer_config"]["backend"] == "nccl"
    assert info["model_config"]["max_model_len"] == 512  # from the rendered --max_model_len
    assert client.get_world_size() == 1  # --tensor_parallel_size 1 on the single-node cluster


def test_trl_client_generates_through_the_sidecar(client):
    out = client.generate(["What is 1 + 1?", "What is 2 + 2?"], n=3, max_tokens=8, temperature=0.9)
    assert len(out["completion_ids"]) == 6
    assert all(0 < len(ids) <= 8 for ids in out["completion_ids"])


def test_weight_sync_needs_cuda_and_says_so(client):
    with pytest.raises(NotImplementedError, match="needs a CUDA device"):
        client.init_communicator(device="cpu")
