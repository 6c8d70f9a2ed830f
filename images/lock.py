"""The image's lock: the whole dependency closure of pyproject.toml's image extras, with hashes.

``images/requirements.lock`` pins every package the image installs (``pip install --require-hashes --no-deps``)
for CPython 3.12 on linux x86_64 (manylinux_2_28: the glibc of Ubuntu 22.04 and 24.04 is newer). It is written
by ``uv pip compile`` from pyproject.toml; a re-compile keeps the versions already in the lock where pyproject
still allows them, so only a change of pyproject.toml (or ``--upgrade``) changes it.

  python images/lock.py write [--upgrade]   # make lock: (re)write the lock
  python images/lock.py check               # make check-image: exit 1 if the lock does not match pyproject.toml

Both need PyPI (uv resolves against it; nothing is installed). For NVIDIA drivers older than 580, a second lock
takes torch (and vLLM) CUDA 12.x builds from their own indexes, e.g.
  python images/lock.py write --lock images/requirements-cu128.lock \
      --extra-index-url https://download.pytorch.org/whl/cu128
(the best match across the indexes wins: torch 2.13.0+cu128 over PyPI's CUDA 13 2.13.0).
"""

import argparse
import difflib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = "images/requirements.lock"
EXTRAS = ("train", "vllm", "report")
PYTHON_VERSION = "3.12"
PLATFORM = "x86_64-manylinux_2_28"


def _uv() -> str:
    uv = shutil.which("uv", path=os.path.dirname(sys.executable)) or shutil.which("uv")
    if not uv:
        sys.exit("uv not found: install the test extra (pip install -e '.[test]')")
    return uv


def compile_lock(root: Path, out: Path, upgrade: bool = False, indexes: tuple[str, ...] = ()) -> None:
    """Resolve ``root``/pyproject.toml's image extras into ``out``; an existing ``out`` is kept where it fits."""
    cmd = [_uv(), "pip", "compile", "pyproject.toml", *[a for e in EXTRAS for a in ("--extra", e)],
           "--generate-hashes", "--python-version", PYTHON_VERSION, "--python-platform", PLATFORM,
           "--custom-compile-command", "make lock", "--quiet", "--output-file", str(out)]
    if upgrade:
        cmd.append("--upgrade")
    if indexes:
        cmd += [*(a for url in indexes for a in ("--extra-index-url", url)), "--index-strategy", "unsafe-best-match"]
    # uv builds DeepSpeed's sdist for its metadata: with no CPython 3.12 around it uses this interpreter.
    env = dict(os.environ, UV_PYTHON_DOWNLOADS="never", UV_PYTHON=sys.executable)
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"uv pip compile failed for {root / 'pyproject.toml'}:\n{proc.stderr[-4000:]}")


def check(root: Path) -> int:
    """0 if ``root``/images/requirements.lock is what pyproject.toml resolves to; else print the diff, 1."""
    lock = root / LOCK
    if not lock.exists():
        print(f"{lock}: missing; run `make lock`", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "requirements.lock"
        shutil.copy(lock, fresh)
        compile_lock(root, fresh)
        old, new = lock.read_text().splitlines(), fresh.read_text().splitlines()
    if old == new:
        pins = sum(1 for line in new if line[:1].isalnum())
        print(f"{LOCK}: matches pyproject.toml ({pins} packages, CPython {PYTHON_VERSION}, {PLATFORM})")
        return 0
    diff = [d for d in difflib.unified_diff(old, new, LOCK, "re-compiled", n=0, lineterm="")
            if d[:1] in "+-" and "--hash=" not in d]
    print("\n".join(diff), file=sys.stderr)
    print(f"{LOCK} does not match pyproject.toml: run `make lock` and commit it", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("write", "check"))
    parser.add_argument("--upgrade", action="store_true", help="write: move every package to its newest allowed")
    parser.add_argument("--root", type=Path, default=ROOT, help="the project directory (default: this one)")
    parser.add_argument("--lock", default=LOCK, help="write: the lock file, relative to --root (default: %(default)s)")
    parser.add_argument("--extra-index-url", action="append", default=[], metavar="URL",
                        help="write: another index beside PyPI (repeatable), e.g. PyTorch's CUDA 12.x wheels")
    args = parser.parse_args(argv)
    if args.action == "check":
        return check(args.root)
    compile_lock(args.root, args.root / args.lock, upgrade=args.upgrade, indexes=tuple(args.extra_index_url))
    print(f"wrote {args.root / args.lock}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
