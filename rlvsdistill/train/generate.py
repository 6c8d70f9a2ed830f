"""Distillation data: sample a teacher n times per problem, grade each sample, keep what the paper keeps.

Sampling is an evaluation run (evaluate.py): problems sharded over the pods of an indexed Job, each shard written in
resumable parts, then merged into ``samples.jsonl`` and ``summary.json`` in ``output_dir``. The filters apply after
the merge, so one teacher run serves every student: correct responses only (``keep: correct``); only problems the
student solves at least once in its own evaluation (``student_results``: the paper's "reasoning patterns only"
setting), or all problems; at most ``max_per_problem`` kept responses per problem. Output: ``output_file``, a JSONL
of prompt/completion records for ``sft`` (prompts in ``student_prompt_template``), and beside it
``<output_file>.summary.json`` with what each filter removed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def solved_problem_ids(summary_path: str) -> set[str]:
    """Problems with at least one correct sample in a summary.json written by ``grade`` or ``eval``."""
    from ..io import UserError

    try:
        counts = json.loads(Path(summary_path).read_text()).get("correct_counts")
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"student_results: {summary_path}: {exc}") from None
    if counts is None:
        raise UserError(f"student_results: {summary_path} has no 'correct_counts'")
    return {pid for pid, c in counts.items() if c > 0}


def summary_path(output_file: Path) -> Path:
    """Where the filter counts of a distillation file go."""
    return output_file.with_name(output_file.name + ".summary.json")


def filter_samples(cfg) -> dict:
    """Stream the merged samples through the filters into ``output_file``; returns the counts of each filter."""
    from ..data import format_prompt, load_problems
    from ..evaluate import headline, load_summary
    from ..io import UserError, atomic_open, read_jsonl, write_json
    from ..paths import SAMPLES_FILE, resolve_output_dir

    run_dir = resolve_output_dir(cfg.teacher_samples or cfg.output_dir)
    problems = {p.id: p for p in load_problems(cfg.dataset_name, cfg.dataset_split, cfg.max_problems)}
    solved = None
    if cfg.student_results:
        solved = solved_problem_ids(cfg.student_results)
        if not solved & problems.keys():
            raise UserError(f"student_results: no problem of {cfg.dataset_name} is solved in {cfg.student_results} "
                            "(an evaluation of another dataset, or of max_problems that do not overlap?)")
    tokenizer = None
    if "chat" in (cfg.prompt_template, cfg.student_prompt_template):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(cfg.model_name_or_path, revision=cfg.model_revision)
    template = cfg.student_prompt_template or cfg.prompt_template
    counts = {"samples": 0, "dropped_incorrect": 0, "dropped_unsolved_by_student": 0,
              "dropped_over_max_per_problem": 0, "kept": 0}
    kept_per_problem: dict[str, int] = {}
    out = resolve_output_dir(cfg.output_file)
    with atomic_open(out) as f:
        for _, rec in read_jsonl(run_dir / SAMPLES_FILE, required=("problem_id", "sample_index", "response")):
            counts["samples"] += 1
            pid = rec["problem_id"]
            if cfg.keep == "correct" and rec["verdict"]["status"] != "correct":
                counts["dropped_incorrect"] += 1
                continue
            if solved is not None and pid not in solved:
                counts["dropped_unsolved_by_student"] += 1
                continue
            if cfg.max_per_problem and kept_per_problem.get(pid, 0) >= cfg.max_per_problem:
                counts["dropped_over_max_per_problem"] += 1
                continue
            kept_per_problem[pid] = kept_per_problem.get(pid, 0) + 1
            counts["kept"] += 1
            row = {"problem_id": pid, "sample_index": rec["sample_index"],
                   "prompt": format_prompt(template, problems[pid].problem, tokenizer), "completion": rec["response"],
                   "answer": rec["gold"], "verdict": rec["verdict"]["status"], "num_tokens": rec["num_tokens"]}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        counts["problems_kept"] = len(kept_per_problem)
        counts["problems"] = len(problems)
        stats = {**counts, "output_file": str(out), "samples_dir": str(run_dir),
                 "filters": {"keep": cfg.keep, "student_results": cfg.student_results,
                             "max_per_problem": cfg.max_per_problem, "student_prompt_template": template},
                 "teacher": headline(load_summary(run_dir))}
        write_json(summary_path(out), stats)
        if not counts["kept"]:  # raised inside the block: no empty output file is left behind
            raise UserError(
                f"{out}: no sample passed the filters ({counts['samples']} sampled, {counts['dropped_incorrect']} "
                f"incorrect, {counts['dropped_unsolved_by_student']} on problems the student never solved): the "
                f"teacher solved nothing it may keep. Check the teacher model, prompt_template and max_tokens "
                f"(counts in {summary_path(out)})")
    logger.info("generate: kept %d of %d samples (%d problems) -> %s", counts["kept"], counts["samples"],
                counts["problems_kept"], out)
    return stats


# The keys of a filter's config that must equal those of the teacher run whose samples it filters.
TEACHER_KEYS = ("model_name_or_path", "model_revision", "dataset_name", "dataset_split", "max_problems",
                "prompt_template", "n", "temperature", "top_p", "top_k", "max_tokens", "seed", "answer_extract")


def check_teacher_samples(cfg) -> None:
    """Refuse to filter ``teacher_samples`` unless that run is merged and was sampled with this config's settings."""
    from ..io import UserError
    from ..paths import RUN_RECORD, is_complete, resolve_output_dir

    run_dir = resolve_output_dir(cfg.teacher_samples)
    if not is_complete(run_dir):
        raise UserError(f"teacher_samples: {run_dir} is not a merged generate run (no completion marker); run the "
                        "teacher's generate config first")
    record_path = run_dir / RUN_RECORD
    record = json.loads(record_path.read_text()).get("config", {}) if record_path.is_file() else {}
    diff = [f"{k}: {record.get(k)!r} there, {getattr(cfg, k)!r} here" for k in TEACHER_KEYS
            if record.get(k) != getattr(cfg, k)]
    if diff:
        raise UserError(f"teacher_samples: {run_dir} was sampled with other settings ({'; '.join(diff)})")


def merge_main(cfg) -> dict:
    """``rlvsdistill generate-merge``: merge the teacher's shards, then filter them into ``output_file``."""
    from ..evaluate import merge

    merge(cfg)
    return filter_samples(cfg)


def main(cfg) -> dict | None:
    """``rlvsdistill generate``: sample and grade this shard; with a single shard, merge and filter too. With
    ``teacher_samples``: only filter that run's merged samples."""
    from ..evaluate import run_shard

    if cfg.teacher_samples:
        check_teacher_samples(cfg)
        return filter_samples(cfg)
    run_shard(cfg, kind="generate")
    if cfg.num_shards == 1:
        return merge_main(cfg)
    return None
