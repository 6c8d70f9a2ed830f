"""rlvsdistill: GRPO vs distillation, accuracy vs capability, as reproducible batch jobs."""

__version__ = "0.1.0"
