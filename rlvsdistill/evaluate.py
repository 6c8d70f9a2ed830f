"""Evaluation at scale: n samples per problem, sharded across pods, resumable, graded while generating.

Flow: problems -> this shard's problems (index i goes to shard i mod S) -> parts of ``part_size`` problems ->
generate (vLLM or HF) -> grade on a background thread (worker processes) while the next part generates ->
``part-NNNNN.jsonl`` written atomically (a restarted shard skips the parts that exist) -> shard marker.
``merge`` then checks that every shard is complete and no record repeats, writes ``samples.jsonl`` and the
``summary.json`` of metrics.py, and marks the run complete.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from .data import Problem, format_prompt, load_problems
from .generation import Completion, Sampling, check_vllm_settings, make_generator
from .grading import GraderPool
from .io import UserError, atomic_open, read_jsonl, read_jsonl_lines, write_json, write_jsonl
from .paths import (
    COMPLETE_MARKER,
    SAMPLES_FILE,
    SHARD_IDENTITY,
    SUMMARY_FILE,
    check_resume,
    mark_complete,
    part_file,
    resolve_output_dir,
    shard_dir,
    write_run_record,
)
from .metrics import problem_stats, summarize_stats
from .progress import Progress
from .scoring import samples_from_records

logger = logging.getLogger(__name__)


def shard_index(cfg) -> int:
    """This process's shard: the config's, else an indexed Job's $JOB_COMPLETION_INDEX, else 0."""
    if cfg.shard_index is not None:
        return cfg.shard_index
    raw = os.environ.get("JOB_COMPLETION_INDEX")
    if raw is None:
        return 0
    try:
        index = int(raw)
    except ValueError:
        raise UserError(f"JOB_COMPLETION_INDEX={raw!r} is not an integer") from None
    if not 0 <= index < cfg.num_shards:
        raise UserError(f"JOB_COMPLETION_INDEX={index} is outside 0..{cfg.num_shards - 1} (num_shards)")
    return index


def shard_problems(problems: list[Problem], index: int, count: int) -> list[Problem]:
    return problems[index::count]


def _records(part: list[Problem], completions: list[list[Completion]], verdicts) -> list[dict]:
    rows, it = [], iter(verdicts)
    for problem, samples in zip(part, completions):
        for i, c in enumerate(samples):
            rows.append({
                "problem_id": problem.id, "sample_index": i, "response": c.text, "num_tokens": c.num_tokens,
                "gold": problem.answer, "level": problem.level, "subject": problem.subject,
                "verdict": next(it).to_dict(),
            })
    return rows


# What makes two shards parts of the same run: a part made with other values is not a part of this run.
IDENTITY_KEYS = ("model_name_or_path", "model_revision", "dataset_name", "dataset_split", "max_problems",
                 "prompt_template", "n", "temperature", "top_p", "top_k", "max_tokens", "seed", "answer_extract",
                 "num_shards", "part_size")


def run_identity(cfg) -> dict:
    """The settings a shard's samples depend on (saved in each shard, compared on resume and merge)."""
    return {key: getattr(cfg, key) for key in IDENTITY_KEYS}


def check_identity(shard: Path, cfg, required: bool = False) -> None:
    """Refuse a shard written by a run with other sampling settings, naming the file and the keys that differ;
    ``required``: a shard without the file (merge) is refused too."""
    path = shard / SHARD_IDENTITY
    if not path.is_file():
        if required:
            raise UserError(f"{path}: missing; {shard} was not written by this version of rlvsdistill")
        return
    try:
        theirs = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg}); remove the shard to redo it") from None
    ours = json.loads(json.dumps(run_identity(cfg)))
    diff = [f"{k}: {theirs.get(k)!r} there, {ours[k]!r} here" for k in IDENTITY_KEYS if theirs.get(k) != ours[k]]
    if diff:
        raise UserError(f"{path}: this shard belongs to another run ({'; '.join(diff)}); use another output_dir, "
                        "or remove the shard to redo it")


def check_part(path: Path, expected: int) -> None:
    """Refuse a finished part that does not hold ``expected`` whole records (a copy cut short, an edited file)."""
    data = path.read_bytes()
    lines = data.count(b"\n")
    if lines != expected or not data.endswith(b"\n"):
        raise UserError(f"{path}: {lines} complete record(s), expected {expected} (truncated?); remove it and "
                        "run the shard again to regenerate that part")


def run_shard(cfg, generator=None, kind: str = "eval") -> Path:
    """Generate and grade this process's shard; returns the shard directory (marked complete).

    Finished parts are skipped (after checking that they are whole and that the shard belongs to this run).
    """
    run_dir = resolve_output_dir(cfg.output_dir)
    index = shard_index(cfg)
    problems = load_problems(cfg.dataset_name, cfg.dataset_split, cfg.max_problems)
    mine = shard_problems(problems, index, cfg.num_shards)
    shard = shard_dir(run_dir, index, cfg.num_shards)
    check_resume(run_dir)  # every shard: parts of another config are never resumed
    check_identity(shard, cfg)
    if generator is None and cfg.backend == "vllm":  # refused settings are named before anything is written
        check_vllm_settings(cfg.model_name_or_path, cfg.model_revision, cfg.vllm_gpu_memory_utilization)
    shard.mkdir(parents=True, exist_ok=True)
    write_json(shard / SHARD_IDENTITY, run_identity(cfg))
    if index == 0:
        write_run_record(run_dir, kind, cfg)
    parts = [mine[i:i + cfg.part_size] for i in range(0, len(mine), cfg.part_size)]
    todo = [i for i in range(len(parts)) if not part_file(shard, i).exists()]
    for i in set(range(len(parts))) - set(todo):
        check_part(part_file(shard, i), len(parts[i]) * cfg.n)
    if len(todo) < len(parts):
        logger.info("shard %d: %d of %d parts already finished, skipping them", index, len(parts) - len(todo),
                    len(parts))
    if todo:
        sampling = Sampling(cfg.n, cfg.temperature, cfg.top_p, cfg.top_k, cfg.max_tokens, cfg.seed)
        pool = GraderPool(workers=cfg.grader_workers)  # workers start while the model loads
        generator = generator or make_generator(cfg.backend, cfg.model_name_or_path, cfg.model_revision,
                                                cfg.tensor_parallel_size, cfg.vllm_max_model_length,
                                                cfg.vllm_gpu_memory_utilization)
        tokenizer = getattr(generator, "tokenizer", None)
        done = sum(len(parts[i]) for i in range(len(parts)) if i not in todo)
        progress = Progress(f"{kind} shard {index}", len(mine), done, scale=cfg.n, unit="samples")
        # One grading thread: it feeds the worker processes while this thread generates the next part.
        grader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grade")
        pending: Future | None = None

        def grade_and_write(i: int, part: list[Problem], completions: list[list[Completion]]) -> None:
            flat = [c.text for samples in completions for c in samples]
            golds = [p.answer for p, samples in zip(part, completions) for _ in samples]
            verdicts = pool.grade(golds, flat, cfg.answer_extract)
            write_jsonl(part_file(shard, i), _records(part, completions, verdicts))

        try:
            for i in todo:
                part = parts[i]
                prompts = [format_prompt(cfg.prompt_template, p.problem, tokenizer) for p in part]
                completions = generator.generate(prompts, [p.id for p in part], sampling)
                if pending is not None:
                    pending.result()  # surfaces a grading error; keeps at most one part in flight
                pending = grader.submit(grade_and_write, i, part, completions)
                progress.update(len(part))
            if pending is not None:
                pending.result()
        finally:
            grader.shutdown(wait=True)
            pool.close()
            progress.close()
    mark_complete(shard)
    logger.info("shard %d of %d complete: %s", index, cfg.num_shards, shard)
    return shard


RECORD_FIELDS = ("problem_id", "sample_index", "response", "verdict")


def _wait_for_shards(cfg, run_dir: Path) -> None:
    from .cluster.jobwatch import wait_for_shards

    missing = wait_for_shards(run_dir, cfg.num_shards, cfg.merge_wait_seconds, poll_seconds=min(30.0, max(
        0.1, cfg.merge_wait_seconds)))
    if missing:
        raise UserError(f"{run_dir}: shard(s) {missing} of {cfg.num_shards} are missing or incomplete; "
                        "run them (or wait for their pods) before merging")
    strays = sorted(p.name for p in (run_dir / "shards").iterdir()
                    if p.name.startswith("shard-") and not p.name.endswith(f"-of-{cfg.num_shards:05d}"))
    if strays:
        raise UserError(f"{run_dir}/shards: {strays} belong to a run with a different num_shards; remove them")


def _shard_stream(cfg, run_dir: Path, index: int, order: dict[str, int]):
    """One shard's records in file order as (sort key, path, line number, raw line, record), each checked.

    A shard holds problems index, index + S, ... in order and each problem's samples by index, so its stream
    must rise strictly; a record that steps back is a duplicate (named with its first copy) or out of order.
    """
    paths = sorted(shard_dir(run_dir, index, cfg.num_shards).glob("part-*.jsonl"))
    prev = None
    for path in paths:
        for lineno, line, rec in read_jsonl_lines(path, required=RECORD_FIELDS):
            pid, sample = rec["problem_id"], rec["sample_index"]
            if pid not in order:
                raise UserError(f"{path}:{lineno}: problem {pid!r} is not in {cfg.dataset_name}")
            if not isinstance(sample, int) or not 0 <= sample < cfg.n:
                raise UserError(f"{path}:{lineno}: sample_index {sample!r} is outside 0..{cfg.n - 1} (n)")
            if order[pid] % cfg.num_shards != index:
                raise UserError(f"{path}:{lineno}: problem {pid!r} belongs to shard {order[pid] % cfg.num_shards}, "
                                f"not {index}: this part comes from another run")
            key = (order[pid], sample)
            if prev is not None and key <= prev:
                first = _first_location(paths, key, order, (path, lineno))
                if first:
                    raise UserError(f"{path}:{lineno}: sample {(pid, sample)} duplicates {first}")
                raise UserError(f"{path}:{lineno}: sample {(pid, sample)} is out of problem order in its shard "
                                "(parts written by runs with a different part_size or problem set?)")
            prev = key
            yield key, path, lineno, line, rec


def _first_location(paths: list[Path], key: tuple[int, int], order: dict[str, int], before: tuple) -> str | None:
    """Where a sample first occurs in a shard's parts (rescanned on the error path only: nothing is kept)."""
    for path in paths:
        for lineno, rec in read_jsonl(path):
            if (path, lineno) == before:
                return None
            if (order.get(rec.get("problem_id")), rec.get("sample_index")) == key:
                return f"{path.name}:{lineno}"
    return None


def _grouped_by_problem(stream):
    """Consecutive records of one problem as lists (each at most n long): (problem id, [(path, line, raw, rec)])."""
    group, current = [], None
    for key, path, lineno, line, rec in stream:
        if group and key[0] != current:
            yield group[0][3]["problem_id"], group
            group = []
        current = key[0]
        group.append((path, lineno, line, rec))
    if group:
        yield group[0][3]["problem_id"], group


def merge(cfg) -> dict:
    """Combine every shard into samples.jsonl and summary.json; refuses missing, incomplete or duplicated shards.

    Streams: a k-way merge of the shards' parts (each already in problem order) is written straight to
    samples.jsonl, one problem at a time, keeping only that problem's ``problem_stats``. Memory grows with the
    number of problems, not samples. An error leaves no new or partial samples.jsonl / summary.json behind.
    """
    run_dir = resolve_output_dir(cfg.output_dir)
    _wait_for_shards(cfg, run_dir)
    for index in range(cfg.num_shards):
        check_identity(shard_dir(run_dir, index, cfg.num_shards), cfg, required=True)
    problems = load_problems(cfg.dataset_name, cfg.dataset_split, cfg.max_problems)
    order = {p.id: i for i, p in enumerate(problems)}
    streams = [_shard_stream(cfg, run_dir, i, order) for i in range(cfg.num_shards)]
    counts, stats, short_at = [0] * len(problems), [], ""
    (run_dir / COMPLETE_MARKER).unlink(missing_ok=True)  # a re-merge is complete again only when it finishes
    progress = Progress("merge", len(problems), scale=cfg.n, unit="samples", every=30.0)
    with atomic_open(run_dir / SAMPLES_FILE, "wb") as out:
        for pid, group in _grouped_by_problem(heapq.merge(*streams, key=lambda item: item[0])):
            last_path, last_line = group[-1][0], group[-1][1]
            out.write(b"".join(line if line.endswith(b"\n") else line + b"\n" for _, _, line, _ in group))
            counts[order[pid]] = len(group)
            if len(group) != cfg.n and not short_at:
                short_at = f" ({pid!r} ends at {last_path}:{last_line}: a truncated part?)"
            stats.append(problem_stats(samples_from_records([g[3] for g in group]), keyword_match=cfg.keyword_match))
            progress.update(1)
        progress.close()
        short = {p.id: counts[i] for i, p in enumerate(problems) if counts[i] != cfg.n}
        if short:
            some = dict(list(short.items())[:5])
            raise UserError(f"{run_dir}: {len(short)} problem(s) do not have n = {cfg.n} samples, "
                            f"e.g. {some}{short_at}")
        try:
            summary = summarize_stats(stats, ks=cfg.ks, length_unit=cfg.length_unit)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    summary["run"] = {"model": cfg.model_name_or_path, "dataset": cfg.dataset_name, "n": cfg.n,
                      "temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": cfg.top_k,
                      "max_tokens": cfg.max_tokens, "seed": cfg.seed, "prompt_template": cfg.prompt_template,
                      "answer_extract": cfg.answer_extract}
    write_json(run_dir / SUMMARY_FILE, summary)
    mark_complete(run_dir)
    logger.info("merged %d samples of %d problems into %s", sum(counts), len(order), run_dir)
    return summary


def main(cfg) -> dict | None:
    """``rlvsdistill eval``: run this shard; with a single shard, merge too and return the summary."""
    run_shard(cfg)
    if cfg.num_shards == 1:
        return headline(merge(cfg))
    return None


def merge_main(cfg) -> dict:
    """``rlvsdistill eval-merge``: merge and return the headline numbers."""
    return headline(merge(cfg))


def headline(summary: dict) -> dict:
    """The keys a person reads first."""
    return {k: v for k, v in summary.items() if k.startswith(("problems", "accuracy", "pass@", "maj@", "verdicts"))}


def load_summary(run_dir: str | os.PathLike) -> dict:
    """A finished run's summary.json (errors name the run directory)."""
    path = Path(run_dir) / SUMMARY_FILE
    if not path.is_file():
        raise UserError(f"{run_dir}: no {SUMMARY_FILE} (is the evaluation merged?)")
    return json.loads(path.read_text())
