"""Scoring a file of responses: records -> verdicts (grading.py) -> summary (metrics.py).

Used by ``rlvsdistill grade`` for outputs of any tool, and by the evaluation job for its own samples.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from .data import Problem, load_problems_jsonl
from .grading import ExtractMode, GraderPool, GraderSettings
from .io import UserError, read_jsonl, write_json, write_jsonl
from .metrics import Bin, Sample, resolve_bins, summarize
from .progress import Progress

logger = logging.getLogger(__name__)

ID_FIELDS = ("problem_id", "unique_id")


def _problem_id(rec: dict) -> str | None:
    for f in ID_FIELDS:
        if f in rec:
            return str(rec[f])
    return None


def load_response_records(path: str | os.PathLike, problems: Sequence[Problem] | None = None) -> list[dict]:
    """Read response records and attach each one's gold answer (and level/subject when problems are given).

    A record needs ``response`` and either ``gold`` or a problem id (``problem_id``/``unique_id``) found in
    ``problems``. Errors name the file and line.
    """
    by_id = {p.id: p for p in problems or ()}
    records = []
    for lineno, rec in read_jsonl(path, required=("response",)):
        where = f"{path}:{lineno}"
        if not isinstance(rec["response"], str):
            raise UserError(f"{where}: field 'response' must be a string")
        pid = _problem_id(rec)
        problem = by_id.get(pid) if pid is not None else None
        if "gold" not in rec:
            if pid is None:
                raise UserError(f"{where}: needs a 'gold' answer or a problem id ({' or '.join(ID_FIELDS)})")
            if problem is None:
                hint = "" if problems else " (pass the problem set with --problems)"
                raise UserError(f"{where}: problem id {pid!r} not found in the problem set{hint}")
            rec["gold"] = problem.answer
        rec["problem_id"] = pid if pid is not None else f"line{lineno}"
        if problem is not None:
            rec.setdefault("level", problem.level)
            rec.setdefault("subject", problem.subject)
        records.append(rec)
    if not records:
        raise UserError(f"{path}: no records")
    return records


def attach_verdicts(
    records: list[dict],
    mode: ExtractMode,
    pool: GraderPool,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict]:
    """Grade each record's response against its gold answer; adds the verdict fields to each record."""
    verdicts = pool.grade([r["gold"] for r in records], [r["response"] for r in records], mode, progress)
    for rec, v in zip(records, verdicts):
        rec["verdict"] = v.to_dict()
    return records


def samples_from_records(records: Sequence[dict]) -> list[Sample]:
    """The metric view of graded records."""
    return [
        Sample(
            problem_id=str(r["problem_id"]),
            correct=r["verdict"]["status"] == "correct",
            status=r["verdict"]["status"],
            key=r["verdict"].get("key"),
            source=r["verdict"].get("source"),
            response=r["response"],
            num_tokens=r.get("num_tokens"),
            level=None if r.get("level") is None else str(r["level"]),
            subject=r.get("subject"),
        )
        for r in records
    ]


def grade_file(
    input_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    problems_path: str | os.PathLike | None = None,
    mode: ExtractMode = "box+fallback",
    settings: GraderSettings | None = None,
    workers: int | None = None,
    item_timeout: float = 10.0,
    ks: Sequence[int] | None = None,
    bins: str | Sequence[Bin] | None = None,
    tokenizer: str | None = None,
    keyword_match: str = "word",
    length_unit: str = "chars",
) -> dict:
    """Grade a JSONL of responses; write ``verdicts.jsonl`` and ``summary.json`` to ``out_dir``; return the summary.

    Lengths are in ``length_unit``; for tokens, every record's ``num_tokens`` is measured with ``tokenizer`` when
    given, else each record needs one.
    """
    problems = load_problems_jsonl(problems_path) if problems_path else None
    records = load_response_records(input_path, problems)
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{out_dir}: cannot create output directory ({exc.strerror})") from None
    if not os.access(out_dir, os.W_OK):
        raise UserError(f"{out_dir}: output directory is not writable")
    # Validate the metric parameters before the (long) grading.
    n = min(Counter(str(r["problem_id"]) for r in records).values())
    if ks and max(ks) > n:
        raise UserError(f"pass@k with k = {max(ks)} needs at least that many samples per problem; n = {n}")
    if bins:
        try:
            resolve_bins(bins, n)
        except ValueError as exc:
            raise UserError(f"--bins: {exc}") from None
    if tokenizer and length_unit != "tokens":
        raise UserError("--tokenizer measures lengths in tokens: add --length-unit tokens")
    lacking = [r["problem_id"] for r in records if not isinstance(r.get("num_tokens"), int)]
    if length_unit == "tokens" and not tokenizer and lacking:
        raise UserError(f"--length-unit tokens: {len(lacking)} record(s) of {input_path} have no num_tokens, e.g. "
                        f"problem {lacking[0]!r}; pass --tokenizer to count them")
    progress = Progress("grading", total=0, unit="answers", every=5.0)
    if tokenizer:
        count_tokens(records, tokenizer)
    with GraderPool(workers=workers, item_timeout=item_timeout, settings=settings) as pool:
        attach_verdicts(records, mode, pool, progress.callback)
    progress.close()
    try:
        summary = summarize(samples_from_records(records), ks=ks, bins=bins, keyword_match=keyword_match,
                            length_unit=length_unit)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    summary["grader"] = {"mode": mode, "order": (settings or GraderSettings()).order, "killed_workers": pool.killed_workers}
    write_jsonl(out_dir / "verdicts.jsonl", records)
    write_json(out_dir / "summary.json", summary)
    return summary


def count_tokens(records: list[dict], tokenizer: str) -> None:
    """Set each record's ``num_tokens`` to its response's length under ``tokenizer`` (no special tokens)."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise UserError("--tokenizer needs transformers (pip install 'rlvsdistill[train]')") from None
    try:
        tok = AutoTokenizer.from_pretrained(tokenizer)
    except (OSError, ValueError) as exc:
        raise UserError(f"--tokenizer: cannot load {tokenizer!r} ({exc})") from None
    lengths = tok([r["response"] for r in records], add_special_tokens=False)["input_ids"]
    for rec, ids in zip(records, lengths):
        rec["num_tokens"] = len(ids)
