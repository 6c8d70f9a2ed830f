"""Distillation data: sample a teacher n times per problem, grade each sample, keep what the paper keeps.

Filters: correct responses only (``keep: correct``); only problems the student already solves at least once
(``student_results``: the paper's "reasoning patterns only" setting) or all problems; at most ``max_per_problem``
correct responses per problem (self-distillation uses 8). Output: JSONL of prompt/completion records for ``sft``.
"""

from __future__ import annotations

import json
import logging

logger = logging.getLogger(__name__)


def solved_problem_ids(summary_path: str) -> set[str]:
    """Problems with at least one correct sample in a summary.json written by ``grade`` or ``eval``."""
    from ..io import UserError

    with open(summary_path) as f:
        counts = json.load(f).get("correct_counts")
    if counts is None:
        raise UserError(f"student_results: {summary_path} has no 'correct_counts'")
    return {pid for pid, c in counts.items() if c > 0}


def main(cfg) -> dict:
    """Run one generation job; returns counts of what was sampled and kept."""
    from ..data import format_prompt, load_problems
    from ..generation import Sampling, make_generator
    from ..grading import GraderPool
    from ..io import write_jsonl
    from ..paths import resolve_output_dir, write_run_record
    from ..progress import Progress

    problems = load_problems(cfg.dataset_name, cfg.dataset_split, cfg.max_problems)
    if cfg.student_results:
        solved = solved_problem_ids(cfg.student_results)
        problems = [p for p in problems if p.id in solved]
        logger.info("%d problems the student solved at least once", len(problems))
    out = resolve_output_dir(cfg.output_file)
    sampling = Sampling(cfg.n, cfg.temperature, cfg.top_p, cfg.top_k, cfg.max_tokens, cfg.seed)
    pool = GraderPool()  # workers start while the model loads
    generator = make_generator(cfg.backend, cfg.model_name_or_path, cfg.model_revision, cfg.tensor_parallel_size,
                               cfg.vllm_max_model_length)
    student_template = cfg.student_prompt_template or cfg.prompt_template
    tokenizer = getattr(generator, "tokenizer", None)
    rows, progress = [], Progress("generate", len(problems), scale=cfg.n, unit="samples")
    try:
        batch = 8
        for start in range(0, len(problems), batch):
            chunk = problems[start:start + batch]
            prompts = [format_prompt(cfg.prompt_template, p.problem, tokenizer) for p in chunk]
            samples = generator.generate(prompts, [p.id for p in chunk], sampling)
            flat = [(p, i, c) for p, cs in zip(chunk, samples) for i, c in enumerate(cs)]
            verdicts = pool.grade([p.answer for p, _, _ in flat], [c.text for _, _, c in flat], cfg.answer_extract)
            kept_per_problem: dict[str, int] = {}
            for (p, i, c), v in zip(flat, verdicts):
                if cfg.keep == "correct" and not v.correct:
                    continue
                if cfg.max_per_problem and kept_per_problem.get(p.id, 0) >= cfg.max_per_problem:
                    continue
                kept_per_problem[p.id] = kept_per_problem.get(p.id, 0) + 1
                rows.append({
                    "problem_id": p.id, "sample_index": i,
                    "prompt": format_prompt(student_template, p.problem, tokenizer),
                    "completion": c.text, "answer": p.answer, "verdict": v.status.value, "num_tokens": c.num_tokens,
                })
            progress.update(len(chunk))
    finally:
        pool.close()
        progress.close()
    write_jsonl(out, rows)
    write_run_record(out.parent, "generate", cfg)
    stats = {"problems": len(problems), "samples": len(problems) * cfg.n, "kept": len(rows),
             "problems_kept": len({r["problem_id"] for r in rows}), "output_file": str(out)}
    logger.info("generate: %s", stats)
    return stats
