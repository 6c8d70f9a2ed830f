"""Problem sets and prompt templates.

A benchmark is data: a pinned Hub dataset (id, revision, split, configs) or a local JSONL/parquet file of MATH
records. A MATH record has ``problem``, ``solution`` and usually ``answer``; when ``answer`` is absent the gold
answer is the solution's last ``\\boxed{}``, as in the MATH training set. Prompts are built from the paper's three
templates, by name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

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


# The paper's three prompt templates (its released evaluation code, system_prompt_1..3).
PROMPT_TEMPLATES: dict[str, str] = {
    "question_only": "{prompt}",
    "qwen_math": (
        "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{{}}.<|im_end|>\n"
        "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
    ),
    "r1": (
        "A conversation between User and Assistant. The User asks a question, and the Assistant solves it. "
        "The Assistant first thinks about the reasoning process in mind and then provides the User with the answer. "
        "The reasoning process is enclosed within <think> </think> and answer is enclosed within <answer> </answer> "
        "tags, respectively. User: {prompt}\nAssistant: <think>"
    ),
}


# "chat": the model's own chat template (its tokenizer's), with this instruction after the problem.
CHAT_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def format_prompt(template: str, problem: str, tokenizer=None) -> str:
    """The prompt text for ``problem`` under a named template (``chat`` needs the model's tokenizer)."""
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise UserError("prompt_template: chat needs a model whose tokenizer has a chat template")
        messages = [{"role": "user", "content": f"{problem}\n{CHAT_INSTRUCTION}"}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if template not in PROMPT_TEMPLATES:
        raise UserError(f"prompt_template: {template!r} is not one of {', '.join(PROMPT_TEMPLATES)}, chat")
    return PROMPT_TEMPLATES[template].format(prompt=problem)


@dataclass(frozen=True)
class HubDataset:
    """A pinned Hub dataset: id, revision (a commit), split, and the configs to concatenate."""

    id: str
    revision: str
    split: str
    configs: tuple[str | None, ...] = (None,)


DATASETS: dict[str, HubDataset] = {
    # MATH-500: the PRM800K test split (the same file as ../shared/data/math500/test.jsonl).
    "math500": HubDataset("HuggingFaceH4/MATH-500", "6e4ed1a2a79af7d8630a6b768ec859cb5af4d3be", "test"),
    # The 7,500 MATH training problems (Hendrycks et al.), one config per subject.
    "math_train": HubDataset(
        "EleutherAI/hendrycks_math",
        "21a5633873b6a120296cce3e2df9d5550074f4a3",
        "train",
        ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
         "prealgebra", "precalculus"),
    ),
    # AIME 2025 I and II (30 problems; fields id, problem, answer), the paper's Figures 15 and 16.
    "aime2025": HubDataset("yentinglin/aime_2025", "6f71d77b0b89b9dabe07ab466c51df33f514df7f", "train"),
}


def _load_hub(spec: HubDataset, split: str | None) -> list[Problem]:
    from datasets import load_dataset

    problems = []
    for config in spec.configs:
        ds = load_dataset(spec.id, config, revision=spec.revision, split=split or spec.split)
        for i, rec in enumerate(ds):
            rec = dict(rec)
            # The dataset's own id when it has one (AIME's), else the row's position.
            rec.setdefault("unique_id", rec.get("id") if rec.get("id") is not None
                           else f"{split or spec.split}/{config or 'all'}/{i}")
            rec["subject"] = rec.get("subject") or rec.get("type")
            problems.append(problem_from_record(rec, f"{spec.id}[{config}] row {i}"))
    return problems


def _load_parquet(path: Path) -> list[Problem]:
    from datasets import Dataset

    ds = Dataset.from_parquet(str(path))
    return [problem_from_record(dict(rec), f"{path} row {i}") for i, rec in enumerate(ds)]


def load_problems(name: str, split: str | None = None, max_problems: int | None = None) -> list[Problem]:
    """Problems of a named Hub dataset (``math_train``, ``math500``, ``aime2025``) or a local .jsonl/.parquet file."""
    if name in DATASETS:
        problems = _load_hub(DATASETS[name], split)
    else:
        path = Path(name)
        if path.suffix == ".jsonl":
            problems = load_problems_jsonl(path)
        elif path.suffix == ".parquet":
            if not path.exists():
                raise UserError(f"{path}: no such file")
            problems = _load_parquet(path)
        else:
            raise UserError(f"dataset {name!r}: expected {', '.join(DATASETS)} or a .jsonl/.parquet path")
    return problems[:max_problems] if max_problems else problems
