"""GRPO (RL with verifiable rewards) with TRL's GRPOTrainer: the paper's RLVR runs.

Each prompt is sampled ``num_generations`` times; the reward is the grader's verdict on the last box (+1/-1 as the
paper, or 1/0), and GRPO's group-relative advantage pushes up the better completions. Generation runs in HF
``generate`` (CPU), vLLM colocated, or a vLLM server sidecar (``use_vllm: true, vllm_mode: server``).
Launch: ``accelerate launch --config_file configs/accelerate/zero3.yaml -m rlvsdistill grpo --config FILE``.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def prompt_dataset(problems, template: str, tokenizer, max_prompt_tokens: int):
    """A datasets.Dataset with ``prompt`` (templated text), ``answer`` and ``problem_id``; over-long prompts dropped."""
    from datasets import Dataset

    from ..data import format_prompt

    rows, dropped = [], 0
    for p in problems:
        prompt = format_prompt(template, p.problem)
        if len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) > max_prompt_tokens:
            dropped += 1
            continue
        rows.append({"prompt": prompt, "answer": p.answer, "problem_id": p.id})
    if dropped:
        logger.warning("dropped %d of %d problems longer than max_prompt_tokens=%d", dropped, len(problems),
                       max_prompt_tokens)
    return Dataset.from_list(rows)


def main(cfg) -> None:
    """Run one GRPO job from a validated GRPORunConfig."""
    from transformers import AutoTokenizer
    from trl import GRPOTrainer

    from ..data import load_problems
    from ..rewards import build_rewards
    from .common import CompletionMarker, prepare_run, train_and_save

    if cfg.use_vllm and cfg.vllm_mode == "colocate":  # a named error now, not a traceback from vLLM's engine
        import torch

        from ..generation import check_vllm_settings, keep_vllm_cpu_weights_reloadable

        check_vllm_settings(cfg.model_name_or_path, cfg.model_revision, cfg.vllm_gpu_memory_utilization)
        if not torch.cuda.is_available():
            keep_vllm_cpu_weights_reloadable()
    out, resume = prepare_run(cfg, "grpo")
    tokenizer = AutoTokenizer.from_pretrained(cfg.model_name_or_path, revision=cfg.model_revision)
    problems = load_problems(cfg.dataset_name, cfg.dataset_split, cfg.max_problems)
    dataset = prompt_dataset(problems, cfg.prompt_template, tokenizer, cfg.max_prompt_tokens)
    reward_funcs, cfg.reward_weights = build_rewards(cfg)
    trainer = GRPOTrainer(
        model=cfg.model_name_or_path,
        reward_funcs=reward_funcs,
        args=cfg,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[CompletionMarker()],
    )
    train_and_save(trainer, out, resume)
