"""The study in miniature on one CPU: base -> distillation and GRPO -> evaluation -> report.

The task is synthetic and exactly gradable: "Compute 7 - 1 + 5." with 1 to 4 operations on digits (the level),
answered step by step and then in ``\\boxed{}``. A tiny Qwen2 "base" is pre-trained briefly on solutions, so it
solves some problems some of the time (capability before RL); a "teacher" of the same size is trained longer.
Then the runs of a study file (``configs/study/demo.yaml``, checked like ``rlvsdistill study plan``), with the
same commands and config keys as on a cluster (``configs/demo/``): the teacher's correct samples on
the training split are distilled into the base (``generate`` + ``sft``), GRPO trains the base with the grader as
reward (``grpo``), the three models are evaluated with n samples per held-out problem (``eval``) and compared
(``report``). Each stage is a subprocess whose log goes to ``<root>/demo/logs/``; a stage whose completion marker
exists is skipped, so an interrupted demo resumes where it stopped.

The demo does not depend on a lucky teacher: floating-point results differ between CPU models, and a teacher that
solves none of its training problems on some machine would leave nothing to distil. When ``generate`` keeps no
sample, the teacher is trained further from its last checkpoint (``TEACHER_ROUNDS`` more rounds of the same
length, each deterministic on one machine) and sampled again; only a teacher that still solves nothing stops the
demo, with what happened and what to do.

Run: ``make demo`` (or ``rlvsdistill demo [--fresh] [--quick]``).
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .io import UserError, atomic_open, write_jsonl
from .paths import volume_root

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "demo"
STUDY = CONFIGS.parent / "study" / "demo.yaml"  # the runs between the tiny models and the report
# --quick: a few steps of each run (eval: every evaluation run).
QUICK = {"base": ["max_steps=60"], "distill-data": ["max_problems=48"], "distilled": ["max_steps=10"],
         "grpo": ["max_steps=4"], "eval": ["max_problems=24", "n=4"]}
LEVELS = (1, 2, 3, 4)
TEACHER_STEPS = {False: 2000, True: 120}  # the teacher's training steps per round (full demo, --quick)
TEACHER_ROUNDS = 3  # extra rounds when the teacher's samples give nothing to distil
NOTHING_KEPT = "no sample passed the filters"  # generate's error when the teacher solved nothing


def make_problem(rng: random.Random, level: int) -> dict:
    """One problem of ``level`` operations, with its gold answer and a step-by-step solution."""
    nums = [rng.randint(1, 9) for _ in range(level + 1)]
    value, expr, steps = nums[0], str(nums[0]), []
    for n in nums[1:]:
        op = rng.choice("+-")
        new = value + n if op == "+" else value - n
        steps.append(f"{value} {op} {n} = {new}.")
        expr += f" {op} {n}"
        value = new
    return {"problem": f"Compute {expr}.", "answer": str(value), "level": level, "subject": "arithmetic",
            "solution": " " + " ".join(steps) + f" The answer is \\boxed{{{value}}}."}


def write_task(out: Path, seed: int = 0, pretrain: int = 2000, train: int = 1000, test: int = 200) -> None:
    """The task's files: pre-training pairs (base and teacher), the training problems, the held-out problems.

    The splits are disjoint: a problem text that appears in one split is never drawn into another.
    """
    rng = random.Random(seed)
    seen: set[str] = set()

    def draw(count: int) -> list[dict]:
        rows = []
        while len(rows) < count:
            p = make_problem(rng, rng.choice(LEVELS))
            if p["problem"] not in seen:
                seen.add(p["problem"])
                rows.append(p)
        return rows

    test_rows, train_rows, pretrain_rows = draw(test), draw(train), draw(pretrain)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "pretrain.jsonl", [{"prompt": p["problem"], "completion": p["solution"]} for p in pretrain_rows])
    for name, rows in (("train.jsonl", train_rows), ("test.jsonl", test_rows)):
        write_jsonl(out / name, [{"unique_id": f"{name.split('.')[0]}/{i}", "problem": p["problem"],
                                  "answer": p["answer"], "level": p["level"], "subject": p["subject"]}
                                 for i, p in enumerate(rows)])
    with atomic_open(out / "corpus.txt") as f:
        for p in pretrain_rows:
            f.write(p["problem"] + p["solution"] + "\n")


@dataclass(frozen=True)
class Stage:
    """One step of the demo: an `rlvsdistill` command line, and the file that says it finished."""

    name: str
    args: list[str]
    done: str  # relative to the demo directory
    quick: list[str] = field(default_factory=list)  # overrides for --quick


def study_stages(demo: Path) -> list[Stage]:
    """The study's runs (configs/study/demo.yaml, its graph checked as `study plan` does), in order, as stages."""
    from .study import load_study, validate

    plan = validate(load_study(str(STUDY), str(demo)))
    return [Stage(key, [run.kind, "--config", run.config, *run.overrides],
                  str(Path(run.marker).relative_to(demo)), QUICK.get(key, QUICK["eval"] if run.kind == "eval" else []))
            for key, run in ((k, plan.runs[k]) for k in plan.order)]


def teacher_stage(demo: Path, steps: int) -> Stage:
    """The teacher's training to ``steps`` steps (a longer run resumes from the checkpoint a shorter one saved)."""
    stage = next(s for s in study_stages(demo) if s.name == "teacher")
    return Stage(stage.name, [*stage.args, f"max_steps={steps}", f"save_steps={steps}"], stage.done)


def stages(demo: Path, quick: bool = False) -> list[Stage]:
    """The demo's steps, in order: the task's tiny models, the study's runs, the report; paths rooted at ``demo``."""
    d = str(demo)
    runs = [teacher_stage(demo, TEACHER_STEPS[quick]) if s.name == "teacher" else s for s in study_stages(demo)]
    evals = [f"{d}/{s.name}" for s in runs if s.args[0] == "eval"]
    return [
        Stage("base-init", ["tiny-model", "--out", f"{d}/base-init", "--seed", "0", "--corpus",
                            f"{d}/task/corpus.txt"], "base-init/model.safetensors"),
        Stage("teacher-init", ["tiny-model", "--out", f"{d}/teacher-init", "--seed", "1", "--corpus",
                               f"{d}/task/corpus.txt"], "teacher-init/model.safetensors"),
        *runs,
        Stage("report", ["report", *evals, "--out", f"{d}/report"], "report/report.md"),
    ]


def _run_stage(stage: Stage, args: list[str], logs: Path, label: str, out) -> tuple[int, Path]:
    """Run one stage's command, its output to its log; returns (exit code, log)."""
    print(f"{label}: rlvsdistill {' '.join(args)}", file=out, flush=True)
    t0 = time.monotonic()
    log = logs / f"{stage.name}.log"
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "-m", "rlvsdistill", *args], stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode == 0:
        print(f"{label}: finished in {time.monotonic() - t0:.0f}s", file=out, flush=True)
    return proc.returncode, log


def _failed(stage: Stage, code: int, log: Path) -> UserError:
    tail = log.read_text().splitlines()[-25:]
    return UserError(f"stage {stage.name} failed (exit {code}); last lines of {log}:\n" + "\n".join(tail))


def _train_teacher_further(demo: Path, quick: bool, logs: Path, label: str, out) -> None:
    """Resume the teacher's training for one more round; raise when the rounds are used up."""
    from .paths import latest_complete_checkpoint

    per_round = TEACHER_STEPS[quick]
    last = latest_complete_checkpoint(demo / "teacher")
    done = int(last.name.split("-")[1]) if last else per_round
    if done >= per_round * (1 + TEACHER_ROUNDS):
        raise UserError(
            f"the demo's teacher still solves none of the training problems it is sampled on after {done} training "
            f"steps (see {logs}/distill-data.log and {demo}/distill.jsonl.summary.json). The demo's task is "
            "learnable in far fewer steps on the CPUs it was tried on: check that the tiny model and the task "
            "were built by this version (`rlvsdistill demo --fresh`), and report the logs if it persists")
    print(f"{label}: the teacher solved none of its sampled training problems after {done} steps; training it "
          f"{per_round} more (round {done // per_round + 1} of at most {1 + TEACHER_ROUNDS}), then sampling again",
          file=out, flush=True)
    stage = teacher_stage(demo, done + per_round)
    code, log = _run_stage(stage, stage.args, logs, label, out)
    if code:
        raise _failed(stage, code, log)
    shutil.rmtree(demo / "distill.samples", ignore_errors=True)  # samples of the weaker teacher


def run(fresh: bool = False, quick: bool = False, out=sys.stdout) -> Path:
    """Run every unfinished stage in order; returns the report's path."""
    demo = volume_root().resolve() / ("demo-quick" if quick else "demo")
    if fresh and demo.exists():
        shutil.rmtree(demo)
    logs = demo / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    if not (demo / "task" / "test.jsonl").exists():
        write_task(demo / "task", **({"pretrain": 300, "train": 48, "test": 24} if quick else {}))
    plan = stages(demo, quick)
    for i, stage in enumerate(plan, 1):
        label = f"[{i}/{len(plan)}] {stage.name}"
        if (demo / stage.done).exists():  # a completion marker, or an output written atomically
            print(f"{label}: done earlier, skipped", file=out, flush=True)
            continue
        args = stage.args + (stage.quick if quick else [])
        code, log = _run_stage(stage, args, logs, label, out)
        while code and stage.name == "distill-data" and NOTHING_KEPT in log.read_text():
            _train_teacher_further(demo, quick, logs, label, out)
            code, log = _run_stage(stage, args, logs, label, out)
        if code:
            raise _failed(stage, code, log)
    report = demo / "report" / "report.md"
    print(f"\ndemo finished in {time.monotonic() - start:.0f}s; report: {report}\n", file=out)
    print(report.read_text().split("## pass@k")[0], file=out)
    return report
