"""The project's runs on a real node, submitted as `make submit-*` submits them (tests/e2e/conftest.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from harness import NAMESPACE, REPO, SETTINGS, timed

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


# Run inside the trainer container: SIGKILL the rank-0 training process (torch.distributed.run gives each worker
# LOCAL_RANK; the launcher itself has none), as an OOM kill or a crash would end it.
KILL_RANK_0 = """
import os, signal
for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
        environ = open(f'/proc/{pid}/environ', 'rb').read().split(b'\\0')
    except OSError:
        continue
    if b'LOCAL_RANK=0' in environ:
        os.kill(int(pid), signal.SIGKILL)
        print('killed', pid)
"""


def test_grpo_trainer_killed_inside_its_pod_resumes_while_status_and_logs_follow(e2e):
    """GRPO with HF generation (``use_vllm: false``: the sidecar needs a GPU), ZeRO-3 on 2 processes. While it runs,
    `rlvsdistill status` shows its pod Running and `rlvsdistill logs -f` follows it. After a complete checkpoint the
    rank-0 trainer is SIGKILLed inside the pod: the pod fails, the Job's retry resumes from the newest complete
    checkpoint and trains only the remaining steps, and `logs -f` follows the retry too, then ends with the run."""
    max_steps, save_steps = 30, 5
    run, out = "e2e-grpo", e2e.volume / "runs" / "grpo-kill"
    with timed(f"grpo: ZeRO-3 x2, trainer killed after checkpoint-{save_steps}, retried to step {max_steps}"):
        e2e.submit("grpo", "configs/cpu/grpo_tiny.yaml", run, *DATA, "use_vllm=false", "output_dir=grpo-kill",
                   f"max_steps={max_steps}", f"save_steps={save_steps}")
        [first] = e2e.wait_for(lambda: e2e.run_pods(run, "Running"), f"a Running pod of {run}", 600)
        follow = e2e.follow(run)
        try:
            status = json.loads(e2e.cli("status", run).stdout)
            assert status["pods"] == {first.metadata.name: "Running"}, status
            assert f"Job/{run}" in status["objects"] and f"ConfigMap/{run}-config" in status["objects"], status
            e2e.wait_for(lambda: (out / f"checkpoint-{save_steps}" / ".complete").is_file(),
                         f"checkpoint-{save_steps} of {run}", 600)
            assert not (out / "final").exists(), "the run ended before the kill: raise max_steps"
            killed = e2e.kubectl("-n", NAMESPACE, "exec", first.metadata.name, "-c", first.spec.containers[0].name,
                                 "--", "python", "-c", KILL_RANK_0)
            assert "killed" in killed.stdout, killed.stdout + killed.stderr
            e2e.wait_job(run, timeout=900)
            followed, waited = follow.communicate(timeout=120)  # ends by itself once the run has
        finally:
            follow.kill()
    logs = pod_logs(e2e, run)
    assert list(logs)[0] == first.metadata.name and len(logs) == 2, list(logs)
    [retry] = list(logs)[1:]
    assert e2e.core().read_namespaced_pod(first.metadata.name, NAMESPACE).status.phase == "Failed"
    resumed = re.search(r"resuming from /data/runs/grpo-kill/checkpoint-(\d+)", logs[retry])
    assert resumed, logs[retry][-3000:]
    step = int(resumed.group(1))
    assert save_steps <= step < max_steps and step % save_steps == 0
    assert len(re.findall(r"\{'loss':", logs[retry])) == max_steps - step, logs[retry][-3000:]
    assert (out / "final" / ".complete").is_file()
    assert follow.returncode == 0, waited
    for pod in (first.metadata.name, retry):  # every pod followed, each line prefixed with its name
        assert f"[{pod}] " in followed, f"logs -f did not follow {pod}:\n{followed[-3000:]}\n{waited}"
    assert re.search(rf"\[{re.escape(retry)}\] .*resuming from", followed), followed[-3000:]


def test_cancel_leaves_nothing_of_the_run(e2e):
    run = "e2e-cancel"
    e2e.submit("eval", "configs/cpu/eval_tiny.yaml", run, *DATA, "output_dir=eval-cancel", "max_problems=500")
    [pod] = e2e.wait_for(lambda: e2e.run_pods(run, "Running"), f"a Running pod of {run}", 300)
    with timed("cancel: a running eval, until nothing of it is left"):
        cancelled = e2e.cli("cancel", run).stdout
        assert f"Job/{run}" in cancelled and f"ConfigMap/{run}-config" in cancelled, cancelled
        e2e.wait_for(lambda: not e2e.kubectl("-n", NAMESPACE, "get", "jobs,pods,configmaps,networkpolicies", "-l",
                                             f"rlvsdistill.io/run={run}", "-o", "name").stdout.strip(),
                     f"every object of {run} gone", 300)
    assert e2e.kubectl("-n", NAMESPACE, "get", "pod", pod.metadata.name, check=False).returncode != 0
    assert "no run" in e2e.cli("cancel", run).stdout


def readme_block(marker: str) -> str:
    """The README's ```bash block that contains ``marker``."""
    for block in re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S):
        if marker in block:
            return block
    raise AssertionError(f"README.md: no ```bash block with {marker!r}")


def test_readme_copy_out_then_report_on_the_base_and_the_distilled_model(e2e, tmp_path):
    """The README's copy-out, run as written with the image under test and two of this session's evaluations for
    its two runs: the tiny model's (test above) and the model SFT distilled from it."""
    with timed("eval of the SFT model"):
        e2e.submit("eval", "configs/cpu/eval_tiny.yaml", "e2e-eval-sft", "model_name_or_path=/data/runs/sft-e2e/final",
                   "dataset_name=/data/math500.jsonl", "output_dir=eval-sft")
        e2e.wait_job("e2e-eval-sft")
    script = readme_block("kubectl -n rlvsdistill run results")
    for readme_run, ours in (("eval-qwen2.5_math_1.5b_math500", "eval-tiny"), ("eval-oat_zero_1.5b_math500", "eval-sft"),
                             (".venv/bin/rlvsdistill", f"{sys.executable} -m rlvsdistill")):
        assert readme_run in script, f"README.md's copy-out no longer has {readme_run!r}: update this test"
        script = script.replace(readme_run, ours)
    # The README's $REGISTRY/rlvsdistill:$IMAGE_TAG is the image under test under a second name.
    e2e.node.ctr("images", "tag", "--force", e2e.image, "localhost/rlvsdistill:e2e")
    env = {**e2e.env, "REGISTRY": "localhost", "IMAGE_TAG": "e2e", "PATH": f"{e2e.node.bin}:{e2e.env['PATH']}"}
    with timed("README copy-out (kubectl run results, kubectl cp) + report"):
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=900)
    assert done.returncode == 0, f"README copy-out exited {done.returncode}:\n{done.stdout}{done.stderr}\n{e2e.events()}"
    for copied in ("base", "rl"):
        summary = json.loads((tmp_path / "runs" / copied / "summary.json").read_text())
        assert summary, copied
        assert (tmp_path / "runs" / copied / "samples.jsonl").stat().st_size > 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "base" in report and "rl" in report and "pass@k" in report, report[:2000]
    assert e2e.kubectl("-n", NAMESPACE, "get", "pod", "results", check=False).returncode != 0  # deleted, as written


def test_submit_smoke_on_a_node_without_a_gpu_fails_naming_it(e2e):
    """`make submit-smoke` where nvidia.com/gpu is only an extended resource: the Job fails (no retries), and its
    log ends with the SMOKE FAIL line that says no CUDA GPU is visible; nothing hangs on the vLLM sidecar."""
    with timed("make submit-smoke on a node without a GPU"):
        made = subprocess.run(["make", "-s", "submit-smoke", f"CLUSTER={SETTINGS}", f"IMAGE_REF={e2e.image}",
                               "LOCAL_IMAGE=1"], cwd=REPO, env=e2e.env, capture_output=True, text=True, timeout=300)
        assert made.returncode == 0, made.stdout + made.stderr
        e2e.wait_job("smoke", "Failed", timeout=900)
    [log] = pod_logs(e2e, "smoke").values()
    assert "SMOKE FAIL: no CUDA GPU is visible" in log, log[-3000:]
    e2e.cli("cancel", "smoke")
