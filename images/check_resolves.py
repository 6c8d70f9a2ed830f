"""Check, without installing, that the image's pinned requirement set resolves for the CUDA platform.

It asks pip for a dry-run install of pyproject.toml's ``train``, ``vllm`` and ``report`` extras as binary wheels
for CPython 3.12 on manylinux x86_64 (every manylinux_2_N tag from 17 to 39 and the legacy manylinux2014/2010/1 aliases: pip matches
tags exactly). DeepSpeed is
published only as an sdist, so it is checked apart: its sdist must exist, and its own requirements join the
dry run. Prints the resolved CUDA packages; exits non-zero with pip's message when the set does not resolve.

Run: make check-image   (needs PyPI)
"""

import re
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("train", "vllm", "report")
SDIST_ONLY = {"deepspeed"}


def image_requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in EXTRAS:
        reqs += project["optional-dependencies"][extra]
    return reqs


def _name(req: str) -> str:
    return re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0].lower()


def sdist_requirements(req: str, workdir: Path) -> list[str]:
    """Download the sdist of ``req`` and return its declared requirements (from its egg-info requires.txt)."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q",
                    "-d", str(workdir), req], check=True)
    [archive] = list(workdir.glob(f"{_name(req)}-*.tar.gz"))
    with tarfile.open(archive) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".egg-info/requires.txt"))
        text = tar.extractfile(member).read().decode()
    requires = []
    for line in text.splitlines():
        if line.startswith("["):
            break  # extras sections follow the base requirements
        if line.strip():
            requires.append(line.strip())
    return requires


def main() -> int:
    reqs = image_requirements()
    with tempfile.TemporaryDirectory() as tmp:
        wheels = [r for r in reqs if _name(r) not in SDIST_ONLY]
        for req in (r for r in reqs if _name(r) in SDIST_ONLY):
            extra = sdist_requirements(req, Path(tmp))
            print(f"{req}: sdist found; its requirements join the check: {', '.join(extra)}")
            wheels += extra
        # pip matches platform tags exactly: every manylinux_2_N, plus the legacy aliases (manylinux2014 = 2_17 ...)
        tags = [f"manylinux_2_{n}_x86_64" for n in range(17, 40)]
        tags += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
        platforms = [arg for tag in tags for arg in ("--platform", tag)]
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--only-binary=:all:",
               "--python-version", "3.12", "--implementation", "cp", *platforms, "--target", str(Path(tmp) / "t"),
               "--report", str(Path(tmp) / "report.json"), "-q", *wheels]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-4000:], file=sys.stderr)
            print("the image's requirement set does NOT resolve for CUDA / CPython 3.12", file=sys.stderr)
            return 1
        import json

        report = json.loads((Path(tmp) / "report.json").read_text())
    resolved = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in report["install"]}
    cuda = sorted(f"{k}=={v}" for k, v in resolved.items() if k.startswith("nvidia-") or k in ("torch", "vllm"))
    print(f"resolves: {len(resolved)} packages for CPython 3.12 / manylinux x86_64")
    print("CUDA-related: " + ", ".join(cuda))
    return 0


if __name__ == "__main__":
    sys.exit(main())
