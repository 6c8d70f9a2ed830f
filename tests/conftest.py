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
