"""Problem sets: MATH-style problems with gold answers, read from local JSONL files.

A MATH record has ``problem``, ``solution`` and usually ``answer``; when ``answer`` is absent the gold answer is the
solution's last ``\\boxed{}``, as in the MATH training set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .grading import extract_boxed
from .io import UserError, read_jsonl


@dataclass(frozen=True)
class Problem:
    """One problem with its gold answer and optional MATH metadata."""

    id: str
    problem: str
    answer: str
    level: str | None = None
    subject: str | None = None


def problem_from_record(rec: dict, where: str) -> Problem:
    """Build a Problem from a MATH-style record; ``where`` (file:line) goes into errors."""
    if "problem" not in rec:
        raise UserError(f"{where}: missing field 'problem'")
    answer = rec.get("answer")
    if answer is None:
        answer = extract_boxed(rec.get("solution", "") or "")
        if answer is None:
            raise UserError(f"{where}: no 'answer' field and no \\boxed{{}} in 'solution'")
    pid = rec.get("unique_id", rec.get("id"))
    if pid is None:
        raise UserError(f"{where}: missing field 'unique_id' (or 'id')")
    level = rec.get("level")
    return Problem(str(pid), rec["problem"], str(answer), None if level is None else str(level), rec.get("subject"))


def load_problems_jsonl(path: str | os.PathLike) -> list[Problem]:
    """Read MATH-style problems from a JSONL file; duplicate ids are an error."""
    problems, seen = [], {}
    for lineno, rec in read_jsonl(path):
        p = problem_from_record(rec, f"{path}:{lineno}")
        if p.id in seen:
            raise UserError(f"{path}:{lineno}: duplicate problem id {p.id!r} (first at line {seen[p.id]})")
        seen[p.id] = lineno
        problems.append(p)
    if not problems:
        raise UserError(f"{path}: no problems")
    return problems
