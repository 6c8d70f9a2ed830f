"""SFT distillation with TRL's SFTTrainer: train a student on a teacher's (prompt, completion) pairs.

The loss is on completion tokens only (the prompt is context, not a target), as the paper's distillation.
Data comes from ``rlvsdistill generate``. Launch like GRPO: ``accelerate launch ... -m rlvsdistill sft --config FILE``.
"""

from __future__ import annotations


def completion_dataset(path):
    """A datasets.Dataset of ``prompt``/``completion`` pairs from a JSONL file (errors name file:line)."""
    from datasets import Dataset

    from ..io import UserError, read_jsonl

    rows = [{"prompt": r["prompt"], "completion": r["completion"]}
            for _, r in read_jsonl(path, required=("prompt", "completion"))]
    if not rows:
        raise UserError(f"{path}: no prompt/completion records")
    return Dataset.from_list(rows)


def build_trainer(cfg):
    """The SFTTrainer for a validated SFTRunConfig (also used by tests to inspect the collated batches)."""
    from transformers import AutoTokenizer
    from trl import SFTTrainer

    from .common import CompletionMarker

    tokenizer = AutoTokenizer.from_pretrained(cfg.model_name_or_path, revision=cfg.model_revision)
    dataset = completion_dataset(cfg.dataset_name)
    if cfg.max_problems:
        dataset = dataset.select(range(min(cfg.max_problems, len(dataset))))
    return SFTTrainer(
        model=cfg.model_name_or_path,
        args=cfg,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[CompletionMarker()],
    )


def main(cfg) -> None:
    """Run one SFT job."""
    from .common import prepare_run, train_and_save

    out, resume = prepare_run(cfg, "sft")
    train_and_save(build_trainer(cfg), out, resume)
