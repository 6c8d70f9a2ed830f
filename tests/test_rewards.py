"""Reward functions: TRL's signature, the paper's +1/-1 or 1/0, None for an unreadable gold, logged verdicts."""

import logging

import pytest

from rlvsdistill.rewards import accuracy_reward, format_reward

ACCURACY_CASES = [
    # (scale, gold, completion, reward)
    ("plus_minus_one", "7", "so \\boxed{7}", 1.0),  # correct: +1 (the paper)
    ("plus_minus_one", "7", "so \\boxed{8}", -1.0),  # wrong: -1
    ("plus_minus_one", "7", "no box", -1.0),  # no answer is wrong
    ("binary", "7", "\\boxed{7}", 1.0),  # 1/0 scale
    ("binary", "7", "\\boxed{8}", 0.0),
    ("plus_minus_one", "$$", "\\boxed{7}", None),  # unreadable gold: skipped, never a fake 0
]


def test_released_reward_mode_rewards_an_unboxed_correct_answer_and_counts_it_apart(pool):
    """The released reward_func: the last box, else math-verify on the whole completion (issue 10, item 2)."""
    completions, golds = ["so \\boxed{7}", "the answer is $7$", "the answer is $8$"], ["7", "7", "7"]
    assert accuracy_reward(extract="box", pool=pool)(completions=completions, answer=golds) == [1.0, -1.0, -1.0]
    logged = {}
    fn = accuracy_reward(extract="box+free", pool=pool)
    assert fn(completions=completions, answer=golds, log_metric=logged.__setitem__) == [1.0, 1.0, -1.0]
    assert logged["verdicts/correct_from_box"] == pytest.approx(1 / 3)
    assert logged["verdicts/correct_from_free"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("scale,gold,completion,reward", ACCURACY_CASES)
def test_accuracy_reward(pool, scale, gold, completion, reward):
    fn = accuracy_reward(scale, pool=pool)
    assert fn(completions=[completion], answer=[gold]) == [reward]


def test_conversational_completions_and_logged_verdicts(pool):
    logged = {}
    fn = accuracy_reward(pool=pool)
    completions = [[{"role": "assistant", "content": "\\boxed{3}"}], [{"role": "assistant", "content": "hmm"}]]
    assert fn(completions=completions, answer=["3", "3"], log_metric=logged.__setitem__) == [1.0, -1.0]
    assert logged["verdicts/correct"] == 0.5 and logged["verdicts/no_answer"] == 0.5


def test_warns_after_a_streak_without_correct_answers(pool, caplog):
    fn = accuracy_reward(warn_after=3, pool=pool)
    with caplog.at_level(logging.WARNING, logger="rlvsdistill.rewards"):
        for _ in range(3):
            fn(completions=["\\boxed{1}"], answer=["2"])
    assert "no completion has been correct for 3 reward calls" in caplog.text


FORMAT_CASES = [
    # (template, completion, reward)
    ("qwen_math", "work... \\boxed{5}", 1.0),  # a closed box
    ("qwen_math", "work... \\boxed{5", 0.0),  # cut off inside the box
    ("r1", "think </think> <answer> \\boxed{5} </answer>", 1.0),  # R1: tags after the <think> prompt
    ("r1", "\\boxed{5}", 0.0),  # R1 without the tags
]


@pytest.mark.parametrize("template,completion,reward", FORMAT_CASES)
def test_format_reward(template, completion, reward):
    assert format_reward(template)(completions=[completion]) == [reward]
