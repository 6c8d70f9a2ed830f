"""Reward functions on the one grader, with TRL's signature, built by factories and looked up by name.

A reward takes ``completions`` and the dataset's ``answer`` column and returns one float per completion, or None
where the gold answer itself cannot be parsed (TRL then skips it rather than punishing the model).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from .grading import GraderPool, Status, count_statuses, shared_pool

logger = logging.getLogger(__name__)

RewardFn = Callable[..., list[float | None]]


def _text(completion) -> str:
    """TRL passes strings for standard prompts and message lists for conversational ones."""
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content", "") for m in completion)


def accuracy_reward(scale: str = "plus_minus_one", extract: str = "box", warn_after: int = 20,
                    pool: GraderPool | None = None, workers: int | None = None) -> RewardFn:
    """+1/-1 (the paper) or 1/0 for a correct/incorrect final answer, graded in worker processes.

    ``extract`` is a grading.py extraction mode; the paper configs use ``box+free``, the released code's reward (the
    last box, else math-verify's extraction of the whole completion). Logs the fraction of each verdict and of each
    answer source (``box``, ``free``, ...) per call through TRL's ``log_metric``, so that rewards earned without a
    box are counted apart, and warns loudly when no completion
    was correct for ``warn_after`` calls in a row (a broken prompt, template or grader looks exactly like that).
    Without ``pool``, grades on this rank's ``shared_pool(workers)``.
    """
    correct_value, wrong_value = (1.0, -1.0) if scale == "plus_minus_one" else (1.0, 0.0)
    streak = 0

    def accuracy(completions, answer, log_metric=None, **_) -> list[float | None]:
        nonlocal streak
        verdicts = (pool or shared_pool(workers)).grade(list(answer), [_text(c) for c in completions], mode=extract)
        if log_metric is not None:
            for status, count in count_statuses(verdicts).items():
                log_metric(f"verdicts/{status}", count / len(verdicts))
            for source in ("box", "free", "fallback"):
                log_metric(f"verdicts/correct_from_{source}",
                           sum(v.correct and v.source == source for v in verdicts) / len(verdicts))
        streak = 0 if any(v.status is Status.CORRECT for v in verdicts) else streak + 1
        if streak == warn_after:
            logger.warning(
                "!!! no completion has been correct for %d reward calls in a row: check the prompt template, "
                "max_completion_length (are answers cut off before the box?) and the dataset's answer column", streak
            )
        return [None if v.gold_error else (correct_value if v.correct else wrong_value) for v in verdicts]

    return accuracy


_R1_FORMAT = re.compile(r"^.*?</think>\s*<answer>.*?</answer>\s*$", re.DOTALL)


def format_reward(template: str = "qwen_math") -> RewardFn:
    """1.0 when the completion has the expected shape: a closed \\boxed{} (and, for the R1 template, the
    ``</think> <answer>...</answer>`` tags that follow its ``<think>`` prompt), else 0.0."""
    from .grading import extract_boxed

    def fmt(completions, **_) -> list[float]:
        out = []
        for c in completions:
            text = _text(c)
            ok = extract_boxed(text) is not None and (template != "r1" or bool(_R1_FORMAT.match(text)))
            out.append(1.0 if ok else 0.0)
        return out

    return fmt


REWARDS: dict[str, Callable[..., RewardFn]] = {"accuracy": accuracy_reward, "format": format_reward}


def build_rewards(cfg) -> tuple[list[RewardFn], list[float]]:
    """The reward functions and weights a GRPO config asks for."""
    funcs = [REWARDS["accuracy"](cfg.reward_scale, cfg.answer_extract, cfg.zero_reward_warn_steps,
                                 workers=cfg.grader_workers)]
    weights = [1.0]
    if cfg.format_reward_weight:
        funcs.append(REWARDS["format"](cfg.prompt_template))
        weights.append(cfg.format_reward_weight)
    return funcs, weights
