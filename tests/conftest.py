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
