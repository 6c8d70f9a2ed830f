"""Grader speed: rlvsdistill's pool vs the plain serial baseline (tests/baseline.py), measured in the same run.

Workloads: (1) the shared graded responses (4,794 real responses, mostly distinct answers); (2) a pass@256-shaped
set: 50 MATH-500 problems x 256 responses whose answers repeat as real samples do (a few frequent answers,
a tail of rare ones). Prints the time of each and the speed ratio, for a cold pool (its start-up timed too) and a
warm one (as an eval job's or a GRPO run's pool is after its first batch); targets: >= 1.8x and >= 10x on 2 cores.

Run: make bench-grading   (or: .venv/bin/python tests/benchmarks/bench_grading.py [--workers N])
"""

import argparse
import json
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parents[1])]

from baseline import baseline_grade  # noqa: E402

from rlvsdistill.grading import GraderPool, default_workers  # noqa: E402

SHARED = HERE.parents[2] / "shared" / "data"


def graded_responses():
    rows = []
    for name in ("skythought", "evalscope"):
        rows += [json.loads(line) for line in open(SHARED / "graded-responses" / f"{name}.jsonl")]
    return [r["gold"] for r in rows], [r["response"] for r in rows]


def pass_at_256_workload(problems=50, n=256, seed=0):
    """Responses with a realistic answer distribution: per problem, the gold (in one of two written forms) with
    probability p ~ U(0, 1), else one of a few wrong answers drawn with Zipf-like weights; a few have no box."""
    rng = random.Random(seed)
    rows = [json.loads(line) for line in open(SHARED / "math500" / "test.jsonl")]
    rng.shuffle(rows)
    pool_of_wrong = [r["answer"] for r in rows[problems:]]
    golds, responses = [], []
    for row in rows[:problems]:
        p = rng.random()
        wrong = rng.sample(pool_of_wrong, 12)
        weights = [1 / (i + 1) ** 1.2 for i in range(len(wrong))]
        for _ in range(n):
            u = rng.random()
            if u < 0.03:
                body = "I could not finish the computation."
            elif u < p:
                ans = row["answer"] if rng.random() < 0.8 else row["answer"].replace(" ", "")
                body = f"Working through the steps, we get \\boxed{{{ans}}}."
            else:
                body = f"Therefore the result is \\boxed{{{rng.choices(wrong, weights)[0]}}}."
            golds.append(row["answer"])
            responses.append(body)
    return golds, responses


def bench(name, workload, warm_with, workers, target):
    """Baseline vs a cold pool (started inside the timing) vs a warm one (it graded `warm_with` first, as the
    long-lived pool of an eval job or a GRPO run has; different inputs, so no cache has seen these)."""
    golds, responses = workload
    start = time.perf_counter()
    base = baseline_grade(golds, responses)
    t_base = time.perf_counter() - start
    start = time.perf_counter()
    with GraderPool(workers=workers) as pool:
        ours = pool.grade(golds, responses, mode="box")
        t_cold = time.perf_counter() - start
    with GraderPool(workers=workers) as pool:
        pool.grade(*warm_with, mode="box")
        start = time.perf_counter()
        pool.grade(golds, responses, mode="box")
        t_warm = time.perf_counter() - start
    same = sum(b == v.correct for b, v in zip(base, ours))
    print(
        f"{name}: {len(golds)} responses | baseline {t_base:.2f}s | rlvsdistill ({workers} workers) cold "
        f"{t_cold:.2f}s = {t_base / t_cold:.1f}x, warm {t_warm:.2f}s = {t_base / t_warm:.1f}x (target >= {target}x)"
        f" | same verdict on {same}/{len(golds)}"
    )
    return t_base / t_warm


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--only", choices=("graded", "pass256"), help="one workload")
    args = parser.parse_args()
    ok = True
    graded, pass256 = graded_responses(), pass_at_256_workload()
    if args.only in (None, "graded"):
        ok &= bench("graded-responses", graded, pass256, args.workers, 1.8) >= 1.8
    if args.only in (None, "pass256"):
        ok &= bench("pass@256-shaped", pass256, graded, args.workers, 10) >= 10
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
