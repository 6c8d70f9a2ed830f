"""What every training job does around its TRL trainer: resolve the output directory, save the run record,
mark checkpoints complete once saved on every rank, resume from the newest complete one, save the final model."""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import TrainerCallback

from ..config import global_batch_problems
from ..io import UserError
from ..paths import latest_complete_checkpoint, mark_complete, resolve_output_dir, write_run_record

logger = logging.getLogger(__name__)


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class CompletionMarker(TrainerCallback):
    """Writes ``checkpoint-N/.complete`` after every rank has saved checkpoint N (the marker is written last)."""

    def on_save(self, args, state, control, **kwargs):
        _barrier()
        if state.is_world_process_zero:
            mark_complete(Path(args.output_dir) / f"checkpoint-{state.global_step}")
        return control


def prepare_run(cfg, kind: str) -> tuple[Path, Path | None]:
    """Check the global batch against the processes launched, point ``cfg.output_dir`` at the volume, save the
    run record; returns (output dir, checkpoint to resume)."""
    problems = global_batch_problems(vars(cfg), cfg.world_size)
    if problems:
        raise UserError(f"{kind}: {problems[0]} (launched with {cfg.world_size} processes)")
    out = resolve_output_dir(cfg.output_dir)
    cfg.output_dir = str(out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.model_revision:
        cfg.model_init_kwargs = {**(cfg.model_init_kwargs or {}), "revision": cfg.model_revision}
    resume = latest_complete_checkpoint(out)
    if cfg.process_index == 0:
        write_run_record(out, kind, cfg)
        if resume:
            logger.info("resuming from %s", resume)
    return out, resume


def train_and_save(trainer, out: Path, resume: Path | None) -> Path:
    """Train (resuming if a complete checkpoint exists), then save the final model to ``out/final`` and mark it."""
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    final = out / "final"
    trainer.save_model(str(final))
    _barrier()
    if trainer.is_world_process_zero():
        trainer.processing_class.save_pretrained(str(final))
        mark_complete(final)
        logger.info("final model saved to %s", final)
    return final
