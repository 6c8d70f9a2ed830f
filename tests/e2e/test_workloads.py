"""The project's runs on a real node, submitted as `make submit-*` submits them (tests/e2e/conftest.py)."""

from __future__ import annotations

import json
import re

import pytest

from harness import NAMESPACE, timed

# The workloads take minutes; the session fixture's start (image export and import) counts toward the first one.
pytestmark = pytest.mark.timeout(3600)

DATA = ("model_name_or_path=/data/models/tiny", "dataset_name=/data/math500.jsonl")


def pod_logs(e2e, job: str) -> dict[str, str]:
    """Each pod of Job ``job`` (by name, oldest first) and its main container's log."""
    pods = sorted(e2e.core().list_namespaced_pod(NAMESPACE, label_selector=f"job-name={job}").items,
                  key=lambda p: p.metadata.creation_timestamp)
    return {p.metadata.name: e2e.kubectl("-n", NAMESPACE, "logs", p.metadata.name, "-c",
                                         p.spec.containers[0].name).stdout for p in pods}


def test_eval_two_shards_and_the_merge_that_follows_them(e2e):
    with timed("eval: 2 shards + merge"):
        e2e.submit("eval", "configs/cpu/eval_tiny.yaml", "e2e-eval", *DATA, "num_shards=2")
        e2e.wait_job("e2e-eval")
        e2e.wait_job("e2e-eval-merge")
    run_dir = e2e.volume / "runs" / "eval-tiny"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary, f"empty summary in {run_dir}"
    merge_log = "\n".join(pod_logs(e2e, "e2e-eval-merge").values())
    assert "merged 96 samples of 12 problems" in merge_log, merge_log[-2000:]  # 12 problems x n=8, both shards
    shard_logs = "\n".join(pod_logs(e2e, "e2e-eval").values())
    assert "shard 0 of 2 complete" in shard_logs and "shard 1 of 2 complete" in shard_logs, shard_logs[-2000:]


def test_generate_and_its_merge_then_sft_on_what_they_wrote(e2e):
    with timed("generate: 2 shards + merge"):
        e2e.submit("generate", "configs/cpu/generate_tiny.yaml", "e2e-gen", *DATA, "num_shards=2")
        e2e.wait_job("e2e-gen")
        e2e.wait_job("e2e-gen-merge")
    distill = e2e.volume / "runs" / "distill" / "tiny.jsonl"
    rows = [json.loads(line) for line in distill.read_text().splitlines()]
    assert 0 < len(rows) <= 4 * 2, rows[:2]  # 4 problems, at most max_per_problem=2 each
    with timed("sft: ZeRO-3, 2 processes"):
        e2e.submit("sft", "configs/cpu/sft_tiny.yaml", "e2e-sft", "model_name_or_path=/data/models/tiny",
                   "dataset_name=/data/runs/distill/tiny.jsonl", "output_dir=sft-e2e")
        e2e.wait_job("e2e-sft")
    out = e2e.volume / "runs" / "sft-e2e"
    assert (out / "final" / ".complete").is_file()
    [log] = pod_logs(e2e, "e2e-sft").values()
    assert len(re.findall(r"\{'loss':", log)) == 4, log[-3000:]


def test_sft_pod_deleted_mid_run_is_retried_and_resumes(e2e):
    """`kubectl delete pod` after a complete checkpoint: the Job's retry resumes from the newest complete one and
    logs only the remaining steps (needs the distillation data of the test above)."""
    max_steps, save_steps = 120, 10
    out = e2e.volume / "runs" / "sft-kill"
    with timed(f"sft: pod deleted after checkpoint-{save_steps}, retried to step {max_steps}"):
        e2e.submit("sft", "configs/cpu/sft_tiny.yaml", "e2e-sft-kill", "model_name_or_path=/data/models/tiny",
                   "dataset_name=/data/runs/distill/tiny.jsonl", "output_dir=sft-kill", f"max_steps={max_steps}",
                   f"save_steps={save_steps}")
        [first] = e2e.wait_pod(lambda pods: [p.metadata.name for p in pods if p.metadata.labels.get("job-name") ==
                                             "e2e-sft-kill" and (out / f"checkpoint-{save_steps}" / ".complete")
                                             .is_file()], f"checkpoint-{save_steps} of e2e-sft-kill", 600)
        assert not (out / "final").exists(), "the run ended before the delete: raise max_steps"
        e2e.kubectl("-n", NAMESPACE, "delete", "pod", first, "--wait=false")
        e2e.wait_job("e2e-sft-kill", timeout=900)
    logs = pod_logs(e2e, "e2e-sft-kill")
    assert first not in logs and len(logs) == 1, list(logs)  # the deleted pod is gone; its retry ran to the end
    [log] = logs.values()
    resumed = re.search(r"resuming from /data/runs/sft-kill/checkpoint-(\d+)", log)
    assert resumed, log[-3000:]
    step = int(resumed.group(1))
    assert save_steps <= step < max_steps and step % save_steps == 0
    assert len(re.findall(r"\{'loss':", log)) == max_steps - step, log[-3000:]
    assert (out / "final" / ".complete").is_file()
