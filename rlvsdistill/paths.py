"""The shared volume's layout: run directories, checkpoints and their completion markers, the run record.

Relative output paths live under ``$RLVSDISTILL_ROOT`` (default ``runs/``; the jobs set it to the PVC mount).
A checkpoint counts only once its marker file exists: the marker is written last, after every rank saved.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
from importlib import metadata
from pathlib import Path

from .io import UserError, write_json

ROOT_ENV = "RLVSDISTILL_ROOT"
CONFIG_HASH_ENV = "RLVSDISTILL_CONFIG_HASH"  # set by the submitter in every pod: the run's config hash
RESUME_ANYWAY_ENV = "RLVSDISTILL_RESUME_ANYWAY"  # `submit --resume-anyway`
COMPLETE_MARKER = ".complete"
RUN_RECORD = "run_record.json"
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")
RECORDED_PACKAGES = ("rlvsdistill", "torch", "transformers", "trl", "accelerate", "datasets", "deepspeed",
                     "peft", "vllm", "math-verify")


def volume_root() -> Path:
    """Where relative run paths live."""
    return Path(os.environ.get(ROOT_ENV, "runs"))


def resolve_output_dir(output_dir: str | os.PathLike) -> Path:
    """An absolute output path as is; a relative one under the volume root."""
    path = Path(output_dir)
    return path if path.is_absolute() else volume_root() / path


def mark_complete(directory: str | os.PathLike) -> None:
    """Write the completion marker of a checkpoint (or any output directory), last."""
    (Path(directory) / COMPLETE_MARKER).write_text("ok\n")


def is_complete(directory: str | os.PathLike) -> bool:
    return (Path(directory) / COMPLETE_MARKER).is_file()


def latest_complete_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest ``checkpoint-N`` with a completion marker; half-written checkpoints are never picked."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    found = []
    for child in output_dir.iterdir():
        m = _CHECKPOINT.fullmatch(child.name)
        if m and child.is_dir() and is_complete(child):
            found.append((int(m.group(1)), child))
    return max(found)[1] if found else None


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> str | None:
    """The source commit: $GIT_COMMIT (set in the image), else the checkout's HEAD, else None."""
    if os.environ.get("GIT_COMMIT"):
        return os.environ["GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def check_resume(output_dir: str | os.PathLike) -> None:
    """Refuse to resume outputs made under another config hash (``submit --replace`` with a changed config),
    unless $RLVSDISTILL_RESUME_ANYWAY=1. Runs without a hash (local runs) are not compared."""
    path = Path(output_dir) / RUN_RECORD
    mine = os.environ.get(CONFIG_HASH_ENV)
    if not mine or not path.is_file():
        return
    theirs = json.loads(path.read_text()).get("config_hash")
    if theirs and theirs != mine and os.environ.get(RESUME_ANYWAY_ENV) != "1":
        raise UserError(f"{path}: the outputs here were made with config hash {theirs}, this run's is {mine}; "
                        "resuming would mix two configs. Use another output_dir (or --name), delete the old "
                        "outputs, or resubmit with --resume-anyway")


def write_run_record(output_dir: str | os.PathLike, kind: str, config) -> Path:
    """Save the resolved config, its hash, package versions, image tag and git commit beside a run's outputs
    (after ``check_resume``)."""
    check_resume(output_dir)
    values = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    record = {
        "kind": kind,
        "config_hash": os.environ.get(CONFIG_HASH_ENV),
        "config": json.loads(json.dumps(values, default=str)),
        "versions": package_versions(),
        "image_tag": os.environ.get("IMAGE_TAG"),
        "image": os.environ.get("RLVSDISTILL_IMAGE"),  # the whole reference (with its digest, if given)
        "git_commit": git_commit(),
    }
    path = Path(output_dir) / RUN_RECORD
    write_json(path, record)
    return path


# An evaluation run: shards/<shard>/part-<i>.jsonl (each written atomically; existence means finished), a
# shard's marker once all its parts exist, then samples.jsonl + summary.json from the merge, marked last.
SAMPLES_FILE = "samples.jsonl"
SUMMARY_FILE = "summary.json"
SHARD_IDENTITY = "identity.json"  # in each shard: the sampling settings its parts were made with


def shard_dir(run_dir: str | os.PathLike, index: int, count: int) -> Path:
    return Path(run_dir) / "shards" / f"shard-{index:05d}-of-{count:05d}"


def part_file(shard: str | os.PathLike, part: int) -> Path:
    return Path(shard) / f"part-{part:05d}.jsonl"
