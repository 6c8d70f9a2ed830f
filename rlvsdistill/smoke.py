"""`rlvsdistill smoke`: a few steps of every GPU path on a tiny model made on the spot, ending in one PASS/FAIL line.

The same steps serve `make gpu-check` (on a GPU node, no Kubernetes) and `make submit-smoke` (a Job whose init
container runs the ``tiny-model`` step, whose vLLM sidecar serves that model on its own GPU, and whose main
container runs ``grpo-vllm-server`` and ``eval``). Nothing is read from the Hub: the model, its tokenizer and the
problems are written here. Each step runs the project's real entrypoint in a subprocess and is then checked by what
it left on disk (a complete checkpoint at the last step, a summary of 4 problems), not only by its exit code.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from .io import UserError
from .paths import resolve_output_dir

STEPS = ("tiny-model", "sft-zero3", "grpo-hf", "grpo-vllm-colocate", "grpo-vllm-server", "eval")
GRPO_STEPS = ("grpo-vllm-server", "grpo-vllm-colocate", "grpo-hf")  # the eval step samples the first that ran
VLLM_STEPS = ("grpo-vllm-colocate", "grpo-vllm-server")
CPU_STEPS = ("tiny-model",)  # the smoke Job's init container runs it without a GPU
EVAL_PROBLEMS = 4
# hidden 256 with 4 heads: head size 64, which every vLLM attention backend supports (the default 64 is too small).
TINY_MODEL_ARGS = ["--hidden-size", "256", "--layers", "2"]


@dataclass
class SmokeOptions:
    """What `rlvsdistill smoke` runs (a YAML file of these keys, or the command's flags)."""

    output_dir: str = field(default="gpu-check", metadata={"help": "relative: under $RLVSDISTILL_ROOT"})
    steps: list[str] | None = field(default=None, metadata={"help": "default: every step this machine can run"})
    max_steps: int = 3
    gpus: int | None = field(default=None, metadata={"help": "training processes (default: the visible GPUs)"})
    vllm_server_host: str | None = field(default=None, metadata={
        "help": "grpo-vllm-server: a running `trl vllm-serve` (the Job's sidecar); unset: one is started here"})
    vllm_server_port: int = 8000
    vllm_max_model_length: int = 256
    model_name_or_path: str | None = field(default=None, metadata={
        "help": "where the tiny-model step writes the model (default: <output_dir>/model)"})


def load_options(path: str | None, **flags) -> SmokeOptions:
    """Options from a YAML file (unknown keys named), then the flags that were given."""
    values = {}
    if path:
        with open(path) as f:
            values = yaml.safe_load(f) or {}
    values.update({k: v for k, v in flags.items() if v is not None})
    names = {f.name for f in dataclasses.fields(SmokeOptions)}
    problems = [f"{k}: unknown key for smoke" for k in values if k not in names]
    problems += [f"steps: unknown step {s!r} (steps: {', '.join(STEPS)})" for s in values.get("steps") or []
                 if s not in STEPS]
    if problems:
        raise UserError(f"{path or 'rlvsdistill smoke'}: " + "; ".join(problems))
    return SmokeOptions(**values)


def configs_dir() -> Path:
    """configs/ of this checkout, or of the image (/app/configs), for the accelerate and DeepSpeed files."""
    for candidate in (Path(__file__).resolve().parents[1] / "configs", Path("/app/configs")):
        if (candidate / "accelerate" / "zero3.yaml").is_file():
            return candidate
    raise UserError("cannot find configs/accelerate/zero3.yaml (neither in this checkout nor in /app/configs)")


def write_problems(data_dir: Path) -> None:
    """24 one-step additions whose answer is 7, and SFT pairs answering them as `\\boxed{7}`."""
    data_dir.mkdir(parents=True, exist_ok=True)
    problems = [{"unique_id": f"p{i}", "problem": f"Add {i % 8} and {7 - i % 8}.", "answer": "7", "level": 1,
                 "subject": "Prealgebra"} for i in range(24)]
    (data_dir / "problems.jsonl").write_text("".join(json.dumps(p) + "\n" for p in problems))
    (data_dir / "sft.jsonl").write_text("".join(
        json.dumps({"prompt": p["problem"], "completion": " The answer is \\boxed{7}."}) + "\n" for p in problems))


@dataclass
class Step:
    name: str
    command: list[str]
    config: dict | None = None  # written to <out>/configs/<name>.yaml, passed as --config
    env: dict[str, str] = field(default_factory=dict)
    check: Callable[[], str | None] = lambda: None  # a problem with what the step left, or None
    server: list[str] | None = None  # a vLLM server to start first (and stop after)
    server_env: dict[str, str] = field(default_factory=dict)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _checkpoint_problem(out: Path, max_steps: int) -> str | None:
    checkpoint = out / f"checkpoint-{max_steps}"
    if not (checkpoint / ".complete").is_file() or not (out / "final" / ".complete").is_file():
        return f"no complete {checkpoint.name} and final/ in {out}"
    step = json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
    return None if step == max_steps else f"{checkpoint}: global_step {step}, expected {max_steps}"


def _eval_problem(out: Path) -> str | None:
    summary = out / "summary.json"
    if not summary.is_file():
        return f"no {summary}"
    problems = json.loads(summary.read_text()).get("problems")
    return None if problems == EVAL_PROBLEMS else f"{summary}: {problems} problems, expected {EVAL_PROBLEMS}"


def plan(opts: SmokeOptions, out: Path, gpus: int, steps: list[str], configs: Path) -> list[Step]:
    """The commands, configs and checks of ``steps`` (in STEPS order) for ``gpus`` training processes."""
    model = Path(opts.model_name_or_path or out / "model")
    data = out / "data"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(configs / "accelerate" / "zero3.yaml"), "--deepspeed_config_file",
              str(configs / "deepspeed" / "zero3.json"), "--main_process_port", str(_free_port())]
    common = {"model_name_or_path": str(model), "bf16": True, "max_steps": opts.max_steps,
              "save_steps": opts.max_steps, "logging_steps": 1, "report_to": "none", "seed": 0,
              "dataloader_num_workers": 0}
    grpo = {**common, "dataset_name": str(data / "problems.jsonl"), "prompt_template": "question_only",
            "max_prompt_tokens": 128, "answer_extract": "box", "num_generations": 4, "per_device_train_batch_size": 4,
            "max_completion_length": 32, "learning_rate": 1e-5, "use_vllm": False}
    vllm = {"use_vllm": True, "vllm_max_model_length": opts.vllm_max_model_length}
    # Without a server to use, one is started here on the GPU after the trainer's, as the pod runs them: disjoint
    # CUDA_VISIBLE_DEVICES and a host id each (render.nccl_host_env; the smoke Job's pod sets its own).
    host_id = f"{socket.gethostname()}-{os.getpid()}"
    trainer_env = {} if opts.vllm_server_host else {"CUDA_VISIBLE_DEVICES": ",".join(map(str, range(gpus))),
                                                    "NCCL_HOSTID": f"{host_id}-trainer"}
    server_env = {"CUDA_VISIBLE_DEVICES": str(gpus), "NCCL_HOSTID": f"{host_id}-vllm"}
    port = opts.vllm_server_port if opts.vllm_server_host else _free_port()
    by_name: dict[str, Step] = {}

    def training(name: str, kind: str, values: dict, procs: int, **extra) -> Step:
        return Step(name, [*launch, "--num_processes", str(procs), "-m", "rlvsdistill", kind],
                    {**values, "output_dir": str(out / name)},
                    check=lambda: _checkpoint_problem(out / name, opts.max_steps), **extra)

    by_name["tiny-model"] = Step("tiny-model", [sys.executable, "-m", "rlvsdistill", "tiny-model", "--out",
                                                str(model), *TINY_MODEL_ARGS],
                                 check=lambda: None if (model / "config.json").is_file() else f"no {model}/config.json")
    by_name["sft-zero3"] = training("sft-zero3", "sft", {
        **common, "dataset_name": str(data / "sft.jsonl"), "completion_only_loss": True, "max_length": 128,
        "per_device_train_batch_size": 4, "learning_rate": 1e-4}, gpus)
    by_name["grpo-hf"] = training("grpo-hf", "grpo", grpo, gpus)
    by_name["grpo-vllm-colocate"] = training("grpo-vllm-colocate", "grpo", {
        **grpo, **vllm, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.3}, gpus)
    server = None
    if not opts.vllm_server_host:
        server = [str(Path(sys.executable).parent / "trl"), "vllm-serve", "--model", str(model), "--port", str(port),
                  "--gpu_memory_utilization", "0.5", "--max_model_len", str(opts.vllm_max_model_length)]
    by_name["grpo-vllm-server"] = training("grpo-vllm-server", "grpo", {
        **grpo, **vllm, "vllm_mode": "server", "vllm_server_host": opts.vllm_server_host or "127.0.0.1",
        "vllm_server_port": port}, gpus, env=trainer_env, server=server, server_env=server_env)
    trained = next((out / s / "final" for s in GRPO_STEPS if s in steps), model)
    by_name["eval"] = Step("eval", [sys.executable, "-m", "rlvsdistill", "eval"], {
        "model_name_or_path": str(trained), "dataset_name": str(data / "problems.jsonl"),
        "max_problems": EVAL_PROBLEMS, "prompt_template": "question_only", "n": 2, "max_tokens": 32,
        "temperature": 0.9, "seed": 0, "backend": "auto", "vllm_max_model_length": opts.vllm_max_model_length,
        "answer_extract": "box", "output_dir": str(out / "eval")}, check=lambda: _eval_problem(out / "eval"))
    return [by_name[s] for s in STEPS if s in steps]


def default_steps(opts: SmokeOptions, gpus: int, vllm_installed: bool) -> tuple[list[str], dict[str, str]]:
    """The steps to run and, for the others, why they are skipped."""
    if opts.steps:
        return list(opts.steps), {}
    skipped = {}
    if not vllm_installed:
        skipped.update({s: "vllm is not installed" for s in VLLM_STEPS})
    elif not opts.vllm_server_host and gpus < 2:
        skipped["grpo-vllm-server"] = "needs 2 GPUs (one for the server), or vllm_server_host"
    return [s for s in STEPS if s not in skipped], skipped


def _cuda_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _wait_for_server(proc: subprocess.Popen, port: int, timeout: float = 900) -> str | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"the vLLM server exited ({proc.returncode}) before it was healthy"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/", timeout=5):
                return None
        except OSError:
            time.sleep(5)
    return f"the vLLM server was not healthy within {timeout:.0f} s"


def _run_step(step: Step, out: Path) -> str | None:
    """Run one step (its server first, if any); the problem, or None when it passed."""
    command = list(step.command)
    if step.config is not None:
        config_file = out / "configs" / f"{step.name}.yaml"
        config_file.parent.mkdir(parents=True, exist_ok=True)
        config_file.write_text(yaml.safe_dump(step.config, sort_keys=False))
        command += ["--config", str(config_file)]
    print(f"=== smoke step {step.name}: {' '.join(command)}", flush=True)
    server = None
    try:
        if step.server:
            server = subprocess.Popen(step.server, env={**os.environ, **step.server_env})
            port = int(step.server[step.server.index("--port") + 1])
            problem = _wait_for_server(server, port)
            if problem:
                return problem
        code = subprocess.run(command, env={**os.environ, **step.env}).returncode
        if code != 0:
            return f"exit code {code}"
        return step.check()
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()


def run(opts: SmokeOptions) -> int:
    """Run the steps; print a summary and one final ``SMOKE PASS`` / ``SMOKE FAIL`` line; 0 only if all passed."""
    gpus = _cuda_gpus()
    if gpus == 0 and not (opts.steps and set(opts.steps) <= set(CPU_STEPS)):
        print("SMOKE FAIL: no CUDA GPU is visible here (torch.cuda.is_available() is False); these checks need a "
              "GPU node, and nothing was run", flush=True)
        return 1
    from importlib.util import find_spec

    steps, skipped = default_steps(opts, gpus, find_spec("vllm") is not None)
    out = resolve_output_dir(opts.output_dir)
    train_gpus = opts.gpus or (gpus - 1 if "grpo-vllm-server" in steps and not opts.vllm_server_host else gpus)
    for name in steps:  # a smoke run starts fresh: a checkpoint left by an earlier one would be resumed
        shutil.rmtree(out / ("model" if name == "tiny-model" else name), ignore_errors=True)
    write_problems(out / "data")
    results = {}
    for step in plan(opts, out, train_gpus, steps, configs_dir()):
        if any(r[0] == "FAIL" for r in results.values()):
            results[step.name] = ("NOT RUN", "an earlier step failed", 0.0)
            continue
        start = time.monotonic()
        problem = _run_step(step, out)
        results[step.name] = ("FAIL" if problem else "PASS", problem or "", time.monotonic() - start)
    print(f"smoke summary ({gpus} GPU(s) visible, {train_gpus} training process(es), output {out}):")
    for name, (result, why, seconds) in results.items():
        print(f"  {name:20s} {result:8s} {seconds:7.1f} s  {why}")
    for name, why in skipped.items():
        print(f"  {name:20s} SKIP               {why}")
    failed = [n for n, r in results.items() if r[0] != "PASS"]
    if failed:
        print(f"SMOKE FAIL: {', '.join(failed)} did not pass (see above)", flush=True)
        return 1
    print(f"SMOKE PASS: {', '.join(results)} ({len(results)} steps"
          f"{', skipped: ' + ', '.join(skipped) if skipped else ''})", flush=True)
    return 0
