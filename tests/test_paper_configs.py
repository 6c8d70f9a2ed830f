"""configs/paper/ against the paper (arXiv 2505.14216 v2, A.1-A.8) and its released code: one test per item of
issue 10 (1-7). Each reads the shipped configs; the numbers they check come from ../shared/paper/reference.md."""

import re

import pytest
import yaml

from conftest import ROOT, SHARED, need
from rlvsdistill.cluster.render import training_processes
from rlvsdistill.cluster.settings import load_settings
from rlvsdistill.config import check_values, global_batch_problems
from rlvsdistill.train.generate import TEACHER_KEYS

PAPER = ROOT / "configs" / "paper"
GRPO = sorted(PAPER.glob("grpo_*.yaml"))
SFT = sorted(PAPER.glob("sft_*.yaml"))
MATH_TRAIN_PROBLEMS = 7500


def values(path):
    return yaml.safe_load(path.read_text())


def single_node():
    return load_settings(str(ROOT / "configs" / "cluster" / "single-node.yaml"))


@pytest.mark.parametrize("path", GRPO, ids=lambda p: p.name)
def test_item1_grpo_runs_225_steps_of_28_prompts_and_saves_step_225(path):
    cfg = values(path)
    assert cfg["max_steps"] == 225 and "num_train_epochs" not in cfg  # Table 6, not 25 epochs (~6,700 steps)
    assert cfg["max_steps"] % cfg["save_steps"] == 0  # the step the paper evaluates is a checkpoint
    processes = training_processes("grpo", single_node())
    completions = cfg["per_device_train_batch_size"] * cfg["gradient_accumulation_steps"] * processes
    assert completions == cfg["global_batch_size"] == 4 * 10 * 7  # Table 6: 4 per device x 7 GPUs x 10
    assert completions // cfg["num_generations"] * cfg["max_steps"] <= MATH_TRAIN_PROBLEMS  # under one epoch


@pytest.mark.parametrize("path", GRPO, ids=lambda p: p.name)
def test_item2_reward_is_the_released_reward_func(path):
    # box+free: the last box, else math-verify on the whole completion (graded in test_rewards.py)
    assert values(path)["answer_extract"] == "box+free"


def test_item2_docs_state_the_released_reward():
    doc = (ROOT / "docs" / "paper.md").read_text()
    assert "reward from math-verify on the last box," not in doc  # the old, wrong statement
    assert "else math-verify's extraction of the whole completion" in doc and "box+free" in doc


@pytest.mark.parametrize("path", SFT, ids=lambda p: p.name)
def test_item3_sft_global_batch_is_table_7s_4_and_other_batches_are_refused(path):
    cfg = values(path)
    processes = training_processes("sft", single_node())
    assert cfg["global_batch_size"] == 4
    assert cfg["per_device_train_batch_size"] * cfg["gradient_accumulation_steps"] * processes == 4
    assert global_batch_problems(cfg, processes) == []
    [problem] = global_batch_problems(cfg, 8)  # the old setting: 1 x 2 on 8 GPUs = 16 would be refused
    assert "global_batch_size: the config means 4" in problem


def _generate_configs():
    return {p: values(p) for p in sorted(PAPER.glob("generate_qwq32b_for_*.yaml"))}


def test_item4_teacher_data_per_student_as_the_paper():
    generate = _generate_configs()
    evals = {values(p)["output_dir"]: values(p) for p in PAPER.glob("eval_*math_train.yaml")}
    students = {values(p)["model_name_or_path"] for p in SFT if "qwq32b" in values(p)["dataset_name"]}
    assert len(generate) == len(students) == 2  # one generate/filter config per student
    teacher = values(PAPER / "generate_qwq32b_math_train.yaml")  # QwQ-32B sampled once, for both (issue 18)
    assert check_values("generate", dict(teacher), hardware=False) == []
    for path, cfg in generate.items():
        assert cfg["teacher_samples"] == teacher["output_dir"] and "output_dir" not in cfg
        assert {k: cfg.get(k) for k in TEACHER_KEYS} == {k: teacher.get(k) for k in TEACHER_KEYS}
        assert check_values("generate", dict(cfg), hardware=False) == []
        assert cfg["model_name_or_path"] == "Qwen/QwQ-32B"
        assert cfg["prompt_template"] == cfg["student_prompt_template"] == "r1"  # R1 template, matching SFT
        assert (cfg["temperature"], cfg["top_p"], cfg["top_k"]) == (0.6, 0.95, 50)
        assert cfg["keep"] == "correct"
        assert 25_000 <= MATH_TRAIN_PROBLEMS * min(cfg["n"], cfg["max_per_problem"]) <= 32_000  # about 30k
        # the in-distribution filter: the student's own 256-sample evaluation on the training set
        run = re.fullmatch(r"/data/runs/(.+)/summary\.json", cfg["student_results"])[1]
        student_eval = evals[run]
        assert student_eval["n"] == 256 and student_eval["dataset_name"] == "math_train"
        sft = [values(p) for p in SFT if values(p)["dataset_name"] == f"/data/runs/{cfg['output_file']}"]
        assert [s["model_name_or_path"] for s in sft] == [student_eval["model_name_or_path"]]  # its own student
        assert "new knowledge" not in path.read_text().split("Distillation that brings new knowledge")[0]
    r1_distill = (PAPER / "eval_r1_distill_qwen_1.5b_math500.yaml").read_text()
    assert "new knowledge" in r1_distill and "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B" in r1_distill
    for path in SFT:  # the SFT context holds the teacher's 32k-token traces (longer ones are dropped, counted)
        assert values(path)["max_length"] == 32768 and values(path)["completion_only_loss"] is True


def test_item6_oat_zero_is_evaluated_and_the_1_5b_grpo_run_is_labelled_ours():
    oat = values(PAPER / "eval_oat_zero_1.5b_math500.yaml")
    base = values(PAPER / "eval_qwen2.5_math_1.5b_math500.yaml")
    assert oat["model_name_or_path"] == "sail/Qwen2.5-Math-1.5B-Oat-Zero"
    assert {k: v for k, v in oat.items() if k not in ("model_name_or_path", "output_dir")} == {
        k: v for k, v in base.items() if k not in ("model_name_or_path", "output_dir")}  # the same protocol
    header = (PAPER / "grpo_qwen2.5_math_1.5b.yaml").read_text().split("model_name_or_path")[0]
    assert "THIS PROJECT'S OWN RUN" in header and "Oat-Zero" in header
    doc = (ROOT / "docs" / "paper.md").read_text()
    assert "after GRPO | 74.2%" not in doc and "Oat-Zero" in doc


def test_item7_3b_completion_length_states_which_and_why():
    text = (PAPER / "grpo_qwen2.5_3b.yaml").read_text()
    cfg = yaml.safe_load(text)
    comment = text.split("max_completion_length:")[1].split("\nvllm_max_model_length")[0]
    assert cfg["max_completion_length"] == 32512
    assert "Table 6" in comment and "4,000" in comment and "released" in comment
    assert cfg["max_prompt_tokens"] + cfg["max_completion_length"] <= cfg["vllm_max_model_length"]


def _reference_sampling(row: str) -> tuple[float, float, int]:
    """(temperature, top_p, top_k) of a row of reference.md's training-settings table ("sampling (train and
    eval)", "teacher sampling"), as printed there."""
    text = need(SHARED / "paper" / "reference.md").read_text()
    line = next(line for line in text.splitlines() if line.startswith(f"| {row} |"))
    paper = line.split("|")[2]
    found = re.search(r"temperature ([\d.]+), top_p ([\d.]+), top_k (\d+)", paper)
    return float(found[1]), float(found[2]), int(found[3])


@pytest.mark.parametrize("path", sorted(PAPER.glob("eval_*.yaml")) + GRPO, ids=lambda p: p.name)
def test_issue18_every_evaluation_and_grpo_run_samples_as_the_reference(path):
    """QwQ-32B and R1-Distill included: the paper gives one sampling setting for training and evaluation."""
    cfg = values(path)
    assert (cfg["temperature"], cfg["top_p"], cfg["top_k"]) == _reference_sampling("sampling (train and eval)")


@pytest.mark.parametrize("path", sorted(PAPER.glob("generate_qwq32b_*.yaml")), ids=lambda p: p.name)
def test_issue18_teacher_sampling_is_the_references(path):
    cfg = values(path)
    assert (cfg["temperature"], cfg["top_p"], cfg["top_k"]) == _reference_sampling("teacher sampling")
