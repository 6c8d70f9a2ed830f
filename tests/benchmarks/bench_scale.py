"""Merge + summary at scale: the streaming `eval-merge` against the previous in-memory one, on synthetic shards.

Synthesizes an evaluation run in the real on-disk format (``evaluate.run_shard``'s shard manifests and
``part-NNNNN.jsonl`` records), then runs each merge in its own child process and prints wall time, samples/s and
the child's peak RSS (``os.wait4``), at two sizes, with the old/new ratios. The new merge runs as a pod runs it:
``python -m rlvsdistill eval-merge --config FILE``. The old one (``old_merge`` below, the implementation this
project had before: every record in a list, a ``Sample`` per record) is kept here as the baseline; the tests
also check that both give the same summary.json and samples.jsonl.

Response lengths are drawn like a 1.5B model's at temperature 0.9 (log-normal, mean about 600 tokens, about
3.6 characters per token), the text carries reflection keywords, and answer keys are spread like real ones.

Run: make bench-scale                       (CI sizes: 250 and 1,000 problems x 256 samples)
     .venv/bin/python tests/benchmarks/bench_scale.py --paper   (adds 7,500 x 256 = 1.92M samples, new merge only)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from rlvsdistill.cluster.render import merge_memory  # noqa: E402
from rlvsdistill.evaluate import run_identity  # noqa: E402
from rlvsdistill.paths import SHARD_IDENTITY  # noqa: E402
from rlvsdistill.io import UserError, read_jsonl, write_json, write_jsonl  # noqa: E402
from rlvsdistill.metrics import (  # noqa: E402
    REFLECTION_KEYWORDS,
    answer_entropy,
    bin_label,
    default_ks,
    difficulty_bins,
    keyword_counts,
    majority_correct,
    pass_at_k,
    validate_bins,
)
from rlvsdistill.paths import (  # noqa: E402
    SAMPLES_FILE,
    SUMMARY_FILE,
    is_complete,
    mark_complete,
    part_file,
    resolve_output_dir,
    shard_dir,
)

CHARS_PER_TOKEN = 3.6
MEAN_TOKENS = 600
SUBJECTS = ("Algebra", "Counting & Probability", "Geometry", "Intermediate Algebra", "Number Theory", "Prealgebra",
            "Precalculus")
_WORDS = ("the", "we", "so", "then", "let", "x", "y", "=", "+", "\\frac{1}{2}", "equation", "solve", "therefore",
          "sum", "of", "is", "and", "\\sqrt{3}", "2", "7", "area", "triangle", "Wait,", "Hmm,", "verify",
          "let me think", "however,", "actually", "ok", "double-check", "Let's", "check", "again", "substitute",
          "factor", "(", ")")


def eval_values(root: Path, problems: int, n: int, shards: int, part_size: int) -> dict:
    """The eval config of a synthetic run (a local problem file under ``root``)."""
    return {"model_name_or_path": "synthetic-1.5b", "dataset_name": str(root / "problems.jsonl"), "n": n,
            "num_shards": shards, "part_size": part_size, "max_tokens": 4096, "seed": 0,
            "output_dir": str(root / "run"), "prompt_template": "qwen_math", "backend": "hf"}


def synthesize(root: Path, problems: int, n: int, shards: int = 4, part_size: int = 8, seed: int = 0,
               mean_tokens: float = MEAN_TOKENS) -> dict:
    """Write a complete sharded eval run of ``problems`` x ``n`` graded samples under ``root``; return its config."""
    from rlvsdistill.config import EvalConfig

    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = [{"unique_id": f"train/{SUBJECTS[i % 7].lower()}/{i}.json", "problem": f"Problem {i}.",
             "answer": str(i % 97), "level": f"Level {1 + i % 5}", "subject": SUBJECTS[i % 7]}
            for i in range(problems)]
    write_jsonl(root / "problems.jsonl", rows)
    values = eval_values(root, problems, n, shards, part_size)
    cfg = EvalConfig(**values)
    corpus = " ".join(rng.choice(_WORDS) for _ in range(400_000))
    sigma = 0.6
    mu = math.log(mean_tokens) - sigma**2 / 2  # log-normal with this mean
    for index in range(shards):
        shard = shard_dir(root / "run", index, shards)
        shard.mkdir(parents=True, exist_ok=True)
        write_json(shard / SHARD_IDENTITY, run_identity(cfg))
        mine = rows[index::shards]
        for part_index, start in enumerate(range(0, len(mine), part_size)):
            records = []
            for p in mine[start:start + part_size]:
                rate = rng.choice((0.0, 0.0, 1.0, rng.random(), rng.random() ** 3))  # a spread of difficulties
                wrong_answers = [str(rng.randrange(1000)) for _ in range(rng.choice((1, 3, 10, 50)))]
                for i in range(n):
                    tokens = max(8, min(4096, int(rng.lognormvariate(mu, sigma))))
                    chars = int(tokens * CHARS_PER_TOKEN)
                    offset = rng.randrange(len(corpus) - chars)
                    roll = rng.random()
                    if roll < rate:
                        answer, status, key = p["answer"], "correct", p["answer"]
                    elif roll < rate + (1 - rate) * 0.9:
                        answer = key = rng.choice(wrong_answers)
                        status = "wrong"
                    else:
                        answer = key = None
                        status = "no_answer"
                    text = corpus[offset:offset + chars] + (f" \\boxed{{{answer}}}" if answer else "")
                    records.append({
                        "problem_id": p["unique_id"], "sample_index": i, "response": text, "num_tokens": tokens,
                        "gold": p["answer"], "level": p["level"], "subject": p["subject"],
                        "verdict": {"status": status, "answer": answer, "source": "box" if answer else None,
                                    "key": key, "error": None, "gold_error": False},
                    })
            write_jsonl(part_file(shard, part_index), records)
        mark_complete(shard)
    return values


# ---------------------------------------------------------------------------------------------------------
# The baseline: merge and summarize as they were before the streaming merge (every record held in memory).
# Kept verbatim apart from taking the output directory and the fields added since (per_problem
# entropy by correctness, keyword_match, length_unit); the metric helpers are the package's own.
# ---------------------------------------------------------------------------------------------------------


def _old_mean(xs):
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


def _old_capability_block(groups, ks):
    out = {"problems": len(groups)}
    if not groups:
        return out
    ns = {len(s) for s in groups.values()}
    n = min(ns)
    out["samples_per_problem"] = n if len(ns) == 1 else {"min": n, "max": max(ns)}
    out["accuracy"] = _old_mean(sum(x.correct for x in s) / len(s) for s in groups.values())
    for k in ks:
        if k <= n:
            out[f"pass@k:k={k}&n={n}"] = _old_mean(
                pass_at_k(len(s), sum(x.correct for x in s), k) for s in groups.values())
    return out


def old_summarize(samples, ks=None, bins=None, keywords=REFLECTION_KEYWORDS, length_unit="chars"):
    """metrics.summarize before the streaming fold."""
    groups = defaultdict(list)
    for s in samples:
        groups[s.problem_id].append(s)
    if not groups:
        raise ValueError("no samples to summarize")
    n = min(len(g) for g in groups.values())
    ks = list(ks) if ks else default_ks(n)
    too_big = [k for k in ks if k > n]
    if too_big:
        raise ValueError(f"pass@k with k = {too_big} needs at least that many samples per problem; n = {n}")
    bins = validate_bins(bins, n) if bins else difficulty_bins(n)
    unit = length_unit
    length_of = (lambda s: s.num_tokens) if unit == "tokens" else (lambda s: len(s.response))
    correct_counts = {pid: sum(x.correct for x in g) for pid, g in groups.items()}
    statuses = Counter(s.status for s in samples)
    sources = Counter(s.source or "none" for s in samples)
    correct_by_source = Counter(s.source for s in samples if s.correct)
    summary = _old_capability_block(groups, ks)
    summary[f"maj@n:n={n}"] = _old_mean(
        majority_correct([x.key for x in g], [x.correct for x in g]) for g in groups.values())
    summary["accuracy_box_only"] = _old_mean(
        sum(x.correct and x.source == "box" for x in g) / len(g) for g in groups.values())
    summary["verdicts"] = {k: statuses.get(k, 0) for k in ("correct", "wrong", "no_answer", "parse_error", "timeout")}
    summary["answer_source"] = dict(sorted(sources.items()))
    summary["correct_by_source"] = dict(sorted(correct_by_source.items()))
    summary["answer_entropy_mean_nats"] = _old_mean(
        answer_entropy([x.key for x in g], [x.correct for x in g]) for g in groups.values())
    bin_rows = []
    for b in bins:
        members = [pid for pid, c in correct_counts.items() if b[0] <= c <= b[1]]
        in_bin = [s for pid in members for s in groups[pid]]
        bin_rows.append({"bin": bin_label(b), "problems": len(members),
                         "mean_length_correct": _old_mean(length_of(s) for s in in_bin if s.correct),
                         "mean_length_wrong": _old_mean(length_of(s) for s in in_bin if not s.correct)})
    summary["difficulty_bins"] = bin_rows
    summary["length_unit"] = unit
    summary["length"] = {"mean": _old_mean(length_of(s) for s in samples),
                         "mean_correct": _old_mean(length_of(s) for s in samples if s.correct),
                         "mean_wrong": _old_mean(length_of(s) for s in samples if not s.correct)}
    counts = [keyword_counts(s.response, keywords) for s in samples]  # every response's, all in memory
    n_correct = sum(s.correct for s in samples)
    n_wrong = len(samples) - n_correct

    def per_response(total, count):
        return total / count if count else None

    summary["keywords"] = list(keywords)
    summary["keyword_match"] = "word"
    summary["keywords_per_response"] = {
        kw: {"correct": per_response(sum(c[kw] for s, c in zip(samples, counts) if s.correct), n_correct),
             "wrong": per_response(sum(c[kw] for s, c in zip(samples, counts) if not s.correct), n_wrong)}
        for kw in keywords}
    summary["keyword_presence"] = {
        kw: {"correct": per_response(sum(c[kw] > 0 for s, c in zip(samples, counts) if s.correct), n_correct),
             "wrong": per_response(sum(c[kw] > 0 for s, c in zip(samples, counts) if not s.correct), n_wrong)}
        for kw in keywords}
    for field in ("level", "subject"):
        values = sorted({str(getattr(g[0], field)) for g in groups.values() if getattr(g[0], field) is not None})
        if values:
            summary[f"by_{field}"] = {
                v: _old_capability_block({p: g for p, g in groups.items() if str(getattr(g[0], field)) == v}, ks)
                for v in values}
    summary["correct_counts"] = dict(sorted(correct_counts.items()))
    per_problem = {}
    counts_of = {id(s): c for s, c in zip(samples, counts)}  # each response's keyword counts, computed once
    for pid, g in groups.items():
        sides = {"correct": [s for s in g if s.correct], "wrong": [s for s in g if not s.correct]}
        per_problem[pid] = {
            "n": len(g), "correct": correct_counts[pid],
            "majority_correct": majority_correct([x.key for x in g], [x.correct for x in g]),
            "answer_entropy_nats": answer_entropy([x.key for x in g], [x.correct for x in g]),
            "answer_entropy_by_correctness": {side: answer_entropy([x.key for x in members], [False] * len(members))
                                              if members else None for side, members in sides.items()},
            "length_sum": {side: sum(length_of(s) for s in members) for side, members in sides.items()},
            "keyword_occurrences": {side: [sum(counts_of[id(s)][kw] for s in members) for kw in keywords]
                                    for side, members in sides.items()},
            "keyword_responses": {side: [sum(counts_of[id(s)][kw] > 0 for s in members) for kw in keywords]
                                  for side, members in sides.items()},
        }
    summary["per_problem"] = per_problem
    return summary


def old_merge(cfg, out_dir: Path) -> dict:
    """evaluate.merge before streaming: every record in a list, sorted, then summarized (no waiting)."""
    from rlvsdistill.data import load_problems
    from rlvsdistill.scoring import samples_from_records

    run_dir = resolve_output_dir(cfg.output_dir)
    missing = [i for i in range(cfg.num_shards) if not is_complete(shard_dir(run_dir, i, cfg.num_shards))]
    if missing:
        raise UserError(f"{run_dir}: shard(s) {missing} of {cfg.num_shards} are missing or incomplete")
    problems = load_problems(cfg.dataset_name, cfg.dataset_split, cfg.max_problems)
    order = {p.id: i for i, p in enumerate(problems)}
    records, seen = [], {}
    for index in range(cfg.num_shards):
        for path in sorted(shard_dir(run_dir, index, cfg.num_shards).glob("part-*.jsonl")):
            for lineno, rec in read_jsonl(path, required=("problem_id", "sample_index", "response", "verdict")):
                key = (rec["problem_id"], rec["sample_index"])
                if key in seen:
                    raise UserError(f"{path}:{lineno}: sample {key} duplicates {seen[key]}")
                if rec["problem_id"] not in order:
                    raise UserError(f"{path}:{lineno}: problem {rec['problem_id']!r} is not in {cfg.dataset_name}")
                seen[key] = f"{path.name}:{lineno}"
                records.append(rec)
    counts: dict[str, int] = {}
    for rec in records:
        counts[rec["problem_id"]] = counts.get(rec["problem_id"], 0) + 1
    short = {pid: counts.get(pid, 0) for pid in order if counts.get(pid, 0) != cfg.n}
    if short:
        raise UserError(f"{run_dir}: {len(short)} problem(s) do not have n = {cfg.n} samples")
    records.sort(key=lambda r: (order[r["problem_id"]], r["sample_index"]))
    summary = old_summarize(samples_from_records(records), ks=cfg.ks, length_unit=cfg.length_unit)
    summary["run"] = {"model": cfg.model_name_or_path, "dataset": cfg.dataset_name, "n": cfg.n,
                      "temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": cfg.top_k,
                      "max_tokens": cfg.max_tokens, "seed": cfg.seed, "prompt_template": cfg.prompt_template,
                      "answer_extract": cfg.answer_extract}
    write_jsonl(out_dir / SAMPLES_FILE, records)
    write_json(out_dir / SUMMARY_FILE, summary)
    return summary


# ---------------------------------------------------------------------------------------------------------
# Measuring: each merge in a child process; its own peak RSS from wait4.
# ---------------------------------------------------------------------------------------------------------


def measure(command: list[str], limit_bytes: int | None = None) -> dict:
    """Run ``command``; return its wall time, exit status and peak RSS (bytes), from this child alone."""
    def cap():
        if limit_bytes:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=cap)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"seconds": time.perf_counter() - start, "cpu": usage.ru_utime + usage.ru_stime, "rc": proc.returncode,
            "rss": usage.ru_maxrss * 1024, "stderr": stderr.decode(errors="replace")[-2000:]}


def new_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "rlvsdistill", "eval-merge", "--config", str(config)]


def old_command(config: Path, out_dir: Path) -> list[str]:
    return [sys.executable, __file__, "--old-merge", str(config), str(out_dir)]


def _line(label: str, samples: int, m: dict) -> str:
    if m["rc"] != 0:
        return f"  {label}: FAILED rc={m['rc']} after {m['seconds']:.1f}s, peak RSS {m['rss'] / 2**20:.0f} MiB"
    return (f"  {label}: {m['seconds']:7.1f}s wall ({m['cpu']:6.1f}s CPU)  {samples / m['seconds']:8,.0f} samples/s  "
            f"peak RSS {m['rss'] / 2**20:7,.0f} MiB")


def run_size(tmp: Path, problems: int, n: int, shards: int, with_old: bool) -> dict:
    root = tmp / f"p{problems}x{n}"
    start = time.perf_counter()
    values = synthesize(root, problems, n, shards)
    size = sum(p.stat().st_size for p in (root / "run" / "shards").rglob("part-*.jsonl"))
    print(f"{problems:,} problems x {n} = {problems * n:,} samples in {shards} shards: {size / 2**20:,.0f} MiB of "
          f"parts (synthesized in {time.perf_counter() - start:.0f}s)", flush=True)
    config = root / "eval.yaml"
    config.write_text(json.dumps(values))  # JSON is YAML
    out = {"samples": problems * n}
    if with_old:
        (root / "old").mkdir()
        out["old"] = measure(old_command(config, root / "old"))
        print(_line("old merge", problems * n, out["old"]), flush=True)
    out["new"] = measure(new_command(config))
    print(_line("new merge", problems * n, out["new"]), flush=True)
    limit = merge_memory({**values, "max_problems": problems})
    fits = out["new"]["rss"] < int(limit.removesuffix("Mi")) * 2**20
    print(f"  rendered merge pod memory limit for this run: {limit}; new merge fits: {fits}", flush=True)
    out["fits"] = fits
    for which in ("old", "new"):
        if which in out and out[which]["rc"] != 0:
            print(out[which]["stderr"], file=sys.stderr)
    if with_old and out["old"]["rc"] == 0 and out["new"]["rc"] == 0:
        old, new = out["old"], out["new"]
        same = (json.loads((root / "old" / SUMMARY_FILE).read_text())
                == json.loads((root / "run" / SUMMARY_FILE).read_text()))
        print(f"  new/old: time {new['seconds'] / old['seconds']:.2f}x, CPU {new['cpu'] / old['cpu']:.2f}x, "
              f"peak RSS {new['rss'] / old['rss']:.2f}x; "
              f"summary.json equal: {same}", flush=True)
        out["same"] = same
    for path in root.rglob("*.jsonl"):  # keep the disk free for the next size
        path.unlink()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 1000], help="problem counts (x --n samples)")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--paper", action="store_true", help="also 7,500 x 256 (1.92M samples), new merge only")
    parser.add_argument("--dir", help="where to synthesize (default: a temporary directory)")
    parser.add_argument("--old-merge", nargs=2, metavar=("CONFIG", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.old_merge:
        from rlvsdistill.config import load_config

        old_merge(load_config("eval", args.old_merge[0]), Path(args.old_merge[1]))
        return 0
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        results = [run_size(Path(tmp), p, args.n, args.shards, with_old=True) for p in args.sizes]
        if args.paper:
            results.append(run_size(Path(tmp), 7500, 256, 8, with_old=False))
    for which in ("old", "new"):
        have = [r for r in results if which in r and r[which]["rc"] == 0]
        if len(have) >= 2:
            small, large = have[0], have[-1]
            print(f"{which} merge peak RSS: {small[which]['rss'] / 2**20:,.0f} MiB at {small['samples']:,} samples, "
                  f"{large[which]['rss'] / 2**20:,.0f} MiB at {large['samples']:,} "
                  f"({large[which]['rss'] / small[which]['rss']:.2f}x for {large['samples'] / small['samples']:.0f}x "
                  "the samples)")
    ok = all(r["new"]["rc"] == 0 and r.get("same", True) and r["fits"] for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
