"""The in-image checks of `make image-test`, run inside the built image as uid 1000 (images/image-test.sh).

The pod's view: /app read-only (root's), /cache, /tmp and /data mounted writable, outputs under /data/runs. It
checks the user and the writable places, that the installed distributions are exactly images/requirements.lock,
the imports, every entrypoint's --help, `rlvsdistill grade` on sample responses, and a tiny-model generate, SFT
and GRPO run on the CPU with checkpoints on /data. Exits non-zero at the first failure.

Usage (inside the image): python /checks/smoke.py /checks/requirements.lock
"""

import importlib.metadata
import json
import os
import pwd
import re
import subprocess
import sys
import time
from pathlib import Path

DATA = Path("/data")
RUNS = Path(os.environ["RLVSDISTILL_ROOT"])


def step(name: str):
    def wrap(fn):
        def run(*args):
            t0 = time.monotonic()
            print(f"[smoke] {name} ...", flush=True)
            fn(*args)
            print(f"[smoke] {name}: ok ({time.monotonic() - t0:.1f} s)", flush=True)
        return run
    return wrap


def sh(*cmd: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"[smoke] FAILED: {' '.join(cmd)} (exit {proc.returncode})\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc.stdout


@step("user and writable places")
def check_user() -> None:
    assert os.getuid() == 1000 and os.getgid() == 1000, (os.getuid(), os.getgid())
    assert pwd.getpwuid(1000).pw_name == "rlvsdistill", pwd.getpwuid(1000)
    assert os.getcwd() == "/app", os.getcwd()
    for path in ("/app/probe", "/app/configs/probe", "/opt/venv/probe"):
        try:
            Path(path).touch()
        except OSError:
            continue
        sys.exit(f"[smoke] FAILED: {path} is writable by uid 1000")
    for place in ("/cache", "/tmp", "/data"):
        (Path(place) / ".probe").touch()
        (Path(place) / ".probe").unlink()


@step("installed distributions are exactly the lock")
def check_lock(lock: Path) -> None:
    pins = dict(re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^ \\]+)", lock.read_text(), re.M))
    norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()  # noqa: E731
    pins = {norm(k): v for k, v in pins.items()}
    installed = {norm(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    wrong = {k: (v, installed.get(k)) for k, v in pins.items() if installed.get(k) != v}
    extra = sorted(set(installed) - set(pins) - {"pip", "rlvsdistill"})
    assert not wrong and not extra, f"differs from the lock: {wrong}; not in the lock: {extra}"
    print(f"[smoke]   {len(pins)} distributions, as locked")


@step("imports")
def check_imports() -> None:
    out = sh(sys.executable, "-c", "import torch, transformers, trl, deepspeed, vllm, math_verify\n"
             "print(*(f'{m.__name__} {m.__version__}' for m in (torch, transformers, trl, deepspeed, vllm)),"
             " f'torch CUDA {torch.version.cuda}', sep='; ')")
    print(f"[smoke]   {out.strip()}")


def _commands(parser, path=()):
    """Every command path of an argparse parser: (), ('grade',), ('submit', 'grpo'), ..."""
    import argparse

    yield path
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


@step("every entrypoint's --help")
def check_help() -> None:
    from rlvsdistill.cli import build_parser

    commands = [["rlvsdistill", *p] for p in _commands(build_parser())]
    commands += [["python", "-m", "rlvsdistill"], ["accelerate", "launch"], ["trl", "vllm-serve"]]
    for cmd in commands:
        assert "usage:" in sh(*cmd, "--help"), cmd
    print(f"[smoke]   {len(commands)} commands")


RESPONSES = [  # (response, gold, verdict)
    ("So the sum is \\boxed{12}.", "12", "correct"),
    ("Half of it: \\boxed{\\frac{1}{2}}", "0.5", "correct"),
    ("The answer is \\boxed{7}.", "8", "wrong"),
    ("I am not sure.", "3", "no_answer"),
]


@step("rlvsdistill grade on sample responses")
def check_grade() -> None:
    src = DATA / "responses.jsonl"
    src.write_text("".join(json.dumps({"problem_id": f"p{i}", "response": r, "gold": g}) + "\n"
                           for i, (r, g, _) in enumerate(RESPONSES)))
    sh("rlvsdistill", "grade", str(src), "--out", str(DATA / "graded"), "--workers", "1", "--extract", "box")
    got = [json.loads(line)["verdict"]["status"] for line in (DATA / "graded" / "verdicts.jsonl").read_text().splitlines()]
    assert got == [v for *_, v in RESPONSES], got
    summary = json.loads((DATA / "graded" / "summary.json").read_text())
    assert summary["accuracy"] == 0.5, summary["accuracy"]


def _complete_checkpoint(run: str) -> Path:
    done = sorted(RUNS.glob(f"{run}/checkpoint-*/.complete"))
    assert done, f"no complete checkpoint under {RUNS / run}"
    return done[-1].parent


@step("tiny model, generate, SFT and GRPO on the CPU")
def check_training() -> None:
    model = RUNS / "tiny-model"
    sh("rlvsdistill", "tiny-model", "--out", str(model))
    problems = DATA / "problems.jsonl"
    problems.write_text("".join(json.dumps({"unique_id": f"t{i}", "problem": f"What is {i} + {i + 1}?",
                                            "answer": str(2 * i + 1)}) + "\n" for i in range(8)))
    common = [f"model_name_or_path={model}", f"dataset_name={problems}"]
    sh("rlvsdistill", "generate", "--config", "configs/cpu/generate_tiny.yaml", *common, "output_file=distill/tiny.jsonl")
    sh("rlvsdistill", "sft", "--config", "configs/cpu/sft_tiny.yaml", f"model_name_or_path={model}",
       f"dataset_name={RUNS / 'distill' / 'tiny.jsonl'}", "max_steps=2", "save_steps=2")
    print(f"[smoke]   SFT: {_complete_checkpoint('sft-tiny')}")
    sh("rlvsdistill", "grpo", "--config", "configs/cpu/grpo_tiny.yaml", *common, "max_steps=1", "save_steps=1")
    print(f"[smoke]   GRPO: {_complete_checkpoint('grpo-tiny')}")


def main() -> int:
    check_user()
    check_lock(Path(sys.argv[1]))
    check_imports()
    check_help()
    check_grade()
    check_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
