"""SFT distillation with TRL's SFTTrainer: train a student on a teacher's (prompt, completion) pairs.

The loss is on completion tokens only (the prompt is context, not a target), as the paper's distillation.
Data comes from ``rlvsdistill generate``. Launch like GRPO: ``accelerate launch ... -m rlvsdistill sft --config FILE``.
"""

from __future__ import annotations


def completion_dataset(path, tokenizer=None, max_length: int | None = None):
    """(datasets.Dataset of ``prompt``/``completion`` pairs from a JSONL file, counts); errors name file:line.

    With a tokenizer and ``max_length``, pairs longer than ``max_length`` tokens (prompt + completion + EOS, as TRL
    tokenizes them) are dropped rather than cut before their answers, and counted.
    """
    from datasets import Dataset

    from ..io import UserError, read_jsonl

    rows = [{"prompt": r["prompt"], "completion": r["completion"]}
            for _, r in read_jsonl(path, required=("prompt", "completion"))]
    if not rows:
        raise UserError(f"{path}: no prompt/completion records (an empty distillation file: see the counts in "
                        f"{path}.summary.json, written by `rlvsdistill generate`)")
    counts = {"records": len(rows), "dropped_longer_than_max_length": 0, "max_length": max_length}
    if tokenizer is not None and max_length:
        def length(r):
            ids = tokenizer([r["prompt"], r["completion"]], add_special_tokens=False)["input_ids"]
            return len(ids[0]) + len(ids[1]) + 1

        kept = [r for r in rows if length(r) <= max_length]
        counts["dropped_longer_than_max_length"] = len(rows) - len(kept)
        if not kept:
            raise UserError(f"{path}: all {len(rows)} records are longer than max_length={max_length} tokens")
        rows = kept
    counts["kept"] = len(rows)
    return Dataset.from_list(rows), counts


def build_trainer(cfg):
    """The SFTTrainer for a validated SFTRunConfig (also used by tests to inspect the collated batches)."""
    import logging
    from pathlib import Path

    from transformers import AutoTokenizer
    from trl import SFTTrainer

    from ..io import write_json
    from .common import CompletionMarker

    tokenizer = AutoTokenizer.from_pretrained(cfg.model_name_or_path, revision=cfg.model_revision)
    dataset, counts = completion_dataset(cfg.dataset_name, tokenizer, cfg.max_length)
    if counts["dropped_longer_than_max_length"]:
        logging.getLogger(__name__).warning(
            "dropped %d of %d records longer than max_length=%d tokens (kept %d)",
            counts["dropped_longer_than_max_length"], counts["records"], cfg.max_length, counts["kept"])
    if cfg.process_index == 0 and Path(cfg.output_dir).is_dir():
        write_json(Path(cfg.output_dir) / "sft_data.json", {"dataset": cfg.dataset_name, **counts})
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
