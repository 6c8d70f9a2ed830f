"""The demo pipeline end to end at reduced size (`rlvsdistill demo --quick`): every stage's artifacts, the report's
numbers against the result files, and a second run that reuses every finished stage."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, run_cli
from rlvsdistill.demo import CONFIGS, make_problem, write_task


def test_task_is_exactly_gradable_and_splits_are_disjoint(tmp_path):
    import random

    rng = random.Random(0)
    for _ in range(200):
        p = make_problem(rng, rng.choice((1, 2, 3, 4)))
        assert eval(p["problem"][len("Compute "):-1]) == int(p["answer"])  # the gold answer is the true value
        assert p["solution"].endswith(f"\\boxed{{{p['answer']}}}.")
    write_task(tmp_path, pretrain=300, train=50, test=30)
    splits = {name: [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
              for name in ("train", "test")}
    pretrain = [json.loads(line)["prompt"] for line in (tmp_path / "pretrain.jsonl").read_text().splitlines()]
    test_problems = {r["problem"] for r in splits["test"]}
    assert not test_problems & {r["problem"] for r in splits["train"]} and not test_problems & set(pretrain)
    assert {r["level"] for r in splits["test"]} == {1, 2, 3, 4}


@pytest.mark.slow
def test_sampling_stages_are_deterministic_on_one_machine(tmp_path, tiny_model):
    """The demo's eval and generate stages, run twice with the same seed in fresh processes, write identical
    samples.jsonl (and distillation data): on one machine a demo's numbers do not move between runs."""
    write_task(tmp_path / "task", pretrain=10, train=6, test=6)
    common = [f"model_name_or_path={tiny_model}", "n=3", "max_tokens=16"]
    for run in ("a", "b"):
        evaluation = run_cli("-m", "rlvsdistill", "eval", "--config", str(CONFIGS / "eval.yaml"), *common,
                             f"dataset_name={tmp_path}/task/test.jsonl", f"output_dir={tmp_path}/{run}/eval")
        assert evaluation.returncode == 0, evaluation.stderr[-2000:]
        generate = run_cli("-m", "rlvsdistill", "generate", "--config", str(CONFIGS / "generate_teacher.yaml"),
                           *common, "keep=all", f"dataset_name={tmp_path}/task/train.jsonl",
                           f"output_file={tmp_path}/{run}/distill.jsonl")
        assert generate.returncode == 0, generate.stderr[-2000:]
    for name in ("eval/samples.jsonl", "distill.samples/samples.jsonl", "distill.jsonl"):
        first, second = (tmp_path / "a" / name).read_bytes(), (tmp_path / "b" / name).read_bytes()
        assert first and first == second, name


@pytest.mark.slow
@pytest.mark.timeout(3600)  # a loaded 2-core machine (CI beside other jobs) runs it several times slower
def test_quick_demo_killed_midway_resumes_and_ends_with_a_true_report(tmp_path):
    env = {**os.environ, "RLVSDISTILL_ROOT": str(tmp_path)}
    cmd = [sys.executable, "-m", "rlvsdistill", "demo", "--quick"]
    demo = tmp_path / "demo-quick"
    # Kill the whole demo (the runner and its stage's process) once its third stage has finished.
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 1800
        while not (demo / "base" / "final" / ".complete").exists():
            assert first.poll() is None and time.monotonic() < deadline, "the demo stopped before its third stage"
            time.sleep(0.05)
    finally:  # also when the wait fails: no demo is left running behind the test
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert not (demo / "report" / "report.md").exists()

    second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=2400)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    for stage in ("base-init", "teacher-init", "base"):
        assert f"{stage}: done earlier, skipped" in second.stdout  # finished stages are not redone
    distilled = (demo / "distill.jsonl").read_text().splitlines()
    assert distilled, "the demo distilled nothing"  # never empty: a teacher that solves nothing is trained further
    assert json.loads((demo / "distill.jsonl.summary.json").read_text())["kept"] == len(distilled)
    for artifact in ("task/test.jsonl", "teacher/final/.complete", "distill.jsonl", "distilled/final/.complete",
                     "grpo/final/.complete", "eval-base/.complete", "eval-distilled/.complete",
                     "eval-grpo/.complete", "report/report.md", "report/pass_at_k.png", "report/success_by_bin.png"):
        assert (demo / artifact).exists(), artifact
    md = (demo / "report" / "report.md").read_text()
    for run in ("eval-base", "eval-distilled", "eval-grpo"):
        summary = json.loads((demo / run / "summary.json").read_text())
        row = re.search(rf"^\| {run} \| [^|]+ \| (\d+) \| (\d+) \| ([\d.]+) \| ([\d.]+) \|", md, re.M)
        assert row and int(row[1]) == summary["problems"] == 24
        assert row[3] == f"{summary['accuracy']:.3f}"  # the table shows the result file's value
        assert row[4] == f"{summary['pass@k:k=4&n=4']:.3f}"
    assert "demo finished" in second.stdout and "| eval-grpo |" in second.stdout  # the headline table is printed

    third = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert third.returncode == 0 and third.stdout.count("done earlier, skipped") == 11  # nothing is redone

    # The demo ran configs/study/demo.yaml's runs: the paper's tables from them, the paper's rows beside.
    tables = subprocess.run([sys.executable, "-m", "rlvsdistill", "report", "--paper", "--study",
                             "configs/study/demo.yaml", "--root", str(demo), "--out", str(demo / "paper")],
                            cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert tables.returncode == 0, tables.stderr[-3000:]
    base = json.loads((demo / "eval-base" / "summary.json").read_text())
    assert f"| Qwen2.5-Math-1.5B | MATH-500 | base | eval-base | 4 | {100 * base['accuracy']:.1f}% / 60.6% |" in \
        tables.stdout and "## Table 4" in tables.stdout


def test_a_teacher_that_never_solves_anything_stops_the_demo_with_what_to_do(tmp_path):
    """After its extra training rounds, a teacher whose samples still give nothing to distil stops the demo with
    a message that says what happened and what to do (the rounds themselves run in the quick demo when needed)."""
    from rlvsdistill.demo import TEACHER_ROUNDS, TEACHER_STEPS, _train_teacher_further
    from rlvsdistill.io import UserError
    from rlvsdistill.paths import mark_complete

    steps = TEACHER_STEPS[True] * (1 + TEACHER_ROUNDS)
    last = tmp_path / "teacher" / f"checkpoint-{steps}"
    last.mkdir(parents=True)
    mark_complete(last)
    with pytest.raises(UserError, match=rf"still solves none of the training problems .* after {steps} training steps"):
        _train_teacher_further(tmp_path, True, tmp_path / "logs", "[5/11] distill-data", out=sys.stdout)
