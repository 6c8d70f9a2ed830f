"""Training jobs on CPU with the tiny model: real SFT and GRPO steps, generate's filters, resume, ZeRO-3."""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import CPU, MATH500, ROOT, need, run_cli, sft_values, write_yaml


def test_sft_loss_falls_and_model_reloads(teacher):
    from transformers import AutoModelForCausalLM

    state = json.loads((teacher / "checkpoint-40" / "trainer_state.json").read_text())
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert len(losses) == 8 and losses[-1] < 0.5 * losses[0], losses
    assert (teacher / "final" / ".complete").is_file() and (teacher / "run_record.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(teacher / "final")
    assert model.config.model_type == "qwen2"
    record = json.loads((teacher / "run_record.json").read_text())
    assert record["kind"] == "sft" and record["versions"]["trl"] == "1.16.0" and record["config"]["max_steps"] == 40


def test_sft_loss_only_on_completion_tokens(tmp_path, tiny_model, sevens):
    from rlvsdistill.config import load_config
    from rlvsdistill.train.sft import build_trainer

    cfg = load_config("sft", write_yaml(tmp_path / "s.yaml", sft_values(tiny_model, sevens / "sft.jsonl", tmp_path)))
    trainer = build_trainer(cfg)
    example = trainer.train_dataset[0]
    batch = trainer.data_collator([example])
    tok = trainer.processing_class
    prompt_len = len(tok(" ".join([]) + "Add 0 and 7.", add_special_tokens=False)["input_ids"])
    labels = batch["labels"][0].tolist()
    assert all(x == -100 for x in labels[:prompt_len])  # the prompt carries no loss
    target = [x for x in labels if x != -100]
    assert tok.decode(target).strip().startswith("The answer is \\boxed{7}.")  # the completion does


def test_grpo_steps_with_real_reward(tmp_path, tiny_model):
    problems = need(MATH500)
    cfg = write_yaml(tmp_path / "grpo.yaml", {
        "model_name_or_path": str(tiny_model), "dataset_name": str(problems), "max_problems": 8,
        "prompt_template": "question_only", "output_dir": str(tmp_path / "out"), "num_generations": 4,
        "per_device_train_batch_size": 4, "max_completion_length": 16, "max_steps": 2, "logging_steps": 1,
        "save_steps": 1, **CPU})
    proc = run_cli("-m", "rlvsdistill", "grpo", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((tmp_path / "out" / "checkpoint-2" / "trainer_state.json").read_text())
    logs = [e for e in state["log_history"] if "reward" in e]
    assert len(logs) == 2
    for entry in logs:
        verdicts = sum(entry[f"verdicts/{k}"] for k in ("correct", "wrong", "no_answer", "parse_error", "timeout"))
        assert verdicts == pytest.approx(1.0) and "frac_reward_zero_std" in entry
    assert (tmp_path / "out" / "checkpoint-1" / ".complete").is_file()
    assert (tmp_path / "out" / "final" / "model.safetensors").is_file()


def test_generate_filters_and_sft_trains_on_it(tmp_path, teacher, sevens):
    from rlvsdistill.config import load_config
    from rlvsdistill.train.generate import main as generate
    from rlvsdistill.train.sft import main as sft

    solved = tmp_path / "student_summary.json"  # the student solved p0..p3 at least once, not p4, p5
    solved.write_text(json.dumps({"correct_counts": {"p0": 2, "p1": 1, "p2": 5, "p3": 1, "p4": 0, "p5": 0}}))
    out = tmp_path / "distill.jsonl"
    cfg = load_config("generate", write_yaml(tmp_path / "gen.yaml", {
        "model_name_or_path": str(teacher / "final"), "dataset_name": str(sevens / "problems.jsonl"),
        "max_problems": 6, "prompt_template": "question_only", "backend": "hf", "n": 6, "max_tokens": 16,
        "temperature": 0.7, "keep": "correct", "max_per_problem": 2, "student_results": str(solved),
        "output_file": str(out)}))
    stats = generate(cfg)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # The filters apply after sampling every problem, and each one's count is reported (and saved).
    assert stats["problems"] == 6 and stats["samples"] == 36
    assert stats["kept"] == len(rows) == 36 - sum(stats[k] for k in (
        "dropped_incorrect", "dropped_unsolved_by_student", "dropped_over_max_per_problem"))
    assert stats["dropped_unsolved_by_student"] > 0 and stats["dropped_over_max_per_problem"] > 0
    assert json.loads((tmp_path / "distill.jsonl.summary.json").read_text())["kept"] == len(rows)
    assert rows and all(r["verdict"] == "correct" for r in rows)  # correct responses only
    assert {r["problem_id"] for r in rows} <= {"p0", "p1", "p2", "p3"}  # problems the student solved
    per_problem = {pid: sum(r["problem_id"] == pid for r in rows) for pid in {r["problem_id"] for r in rows}}
    assert max(per_problem.values()) <= 2  # at most m per problem
    student = load_config("sft", write_yaml(tmp_path / "sft.yaml", sft_values(
        teacher / "final", out, tmp_path / "student", max_steps=4, save_steps=4)))
    sft(student)
    assert (tmp_path / "student" / "final" / ".complete").is_file()
    assert json.loads((tmp_path / "student" / "sft_data.json").read_text())["dropped_longer_than_max_length"] == 0


def test_sft_drops_traces_longer_than_max_length_and_reports_them(tmp_path, tiny_model):
    """A trace longer than the SFT context is dropped (not cut before its answer), and the count is saved."""
    from rlvsdistill.config import load_config
    from rlvsdistill.train.sft import build_trainer

    data = tmp_path / "d.jsonl"
    long = " ".join(["3 + 4 = 7."] * 60) + " The answer is \\boxed{7}."
    data.write_text("".join(json.dumps({"prompt": f"Add {i} and {7 - i}.", "completion": c}) + "\n"
                            for i, c in enumerate([" The answer is \\boxed{7}.", long, long, " \\boxed{7}"])))
    (tmp_path / "out").mkdir()
    cfg = load_config("sft", write_yaml(tmp_path / "s.yaml", sft_values(tiny_model, data, tmp_path / "out")))
    trainer = build_trainer(cfg)
    assert len(trainer.train_dataset) == 2
    counts = json.loads((tmp_path / "out" / "sft_data.json").read_text())
    assert (counts["records"], counts["dropped_longer_than_max_length"], counts["kept"]) == (4, 2, 2)


def test_half_written_checkpoint_is_never_picked(tmp_path):
    from rlvsdistill.paths import latest_complete_checkpoint, mark_complete

    for step in (2, 4, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
    mark_complete(tmp_path / "checkpoint-2")
    mark_complete(tmp_path / "checkpoint-4")  # checkpoint-6 was being written when the pod died
    assert latest_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    assert latest_complete_checkpoint(tmp_path / "absent") is None


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_complete_checkpoint(tmp_path, tiny_model, sevens):
    out = tmp_path / "out"
    cfg = write_yaml(tmp_path / "sft.yaml", sft_values(tiny_model, sevens / "sft.jsonl", out, max_steps=300,
                                                       save_steps=10, logging_steps=1, save_total_limit=None))
    cmd = [sys.executable, "-m", "rlvsdistill", "sft", "--config", str(cfg)]
    first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (out / "checkpoint-10" / ".complete").exists():
        assert first.poll() is None and time.monotonic() < deadline, "first run ended before its first checkpoint"
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    from rlvsdistill.paths import latest_complete_checkpoint

    resumed_from = latest_complete_checkpoint(out)
    step = int(resumed_from.name.split("-")[1])
    assert step < 300
    (out / "checkpoint-999").mkdir()  # a half-written checkpoint (no marker) must be ignored
    second = run_cli("-m", "rlvsdistill", "sft", "--config", str(cfg))
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resuming from {resumed_from}" in second.stderr
    logged_steps = len(re.findall(r"\{'loss':", second.stdout + second.stderr))
    assert logged_steps == 300 - step  # the step count continued: only the remaining steps ran
    final_state = json.loads((out / "checkpoint-300" / "trainer_state.json").read_text())
    assert final_state["global_step"] == 300


def free_port() -> int:
    """A port nobody listens on now (the default 29500 may still be held by a previous run's socket)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _partition_sizes(checkpoint: Path) -> list[int]:
    import torch

    sizes = []
    for f in sorted(checkpoint.glob("global_step*/*optim_states.pt")):
        state = torch.load(f, map_location="cpu", weights_only=False)
        sizes.append(sum(t.numel() for t in state["optimizer_state_dict"]["fp32_flat_groups"]))
    return sizes


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sft", "grpo"])
def test_zero3_two_cpu_processes_partition_parameters(tmp_path, tiny_model, sevens, kind):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    if kind == "sft":
        values = sft_values(tiny_model, sevens / "sft.jsonl", out, max_steps=2, save_steps=2)
    else:
        values = {"model_name_or_path": str(tiny_model), "dataset_name": str(sevens / "problems.jsonl"),
                  "prompt_template": "question_only", "output_dir": str(out), "num_generations": 4,
                  "per_device_train_batch_size": 4, "max_completion_length": 12, "max_steps": 2, "save_steps": 2,
                  "logging_steps": 1, **CPU}
    cfg = write_yaml(tmp_path / f"{kind}.yaml", {**values, "ddp_backend": "gloo"})
    proc = run_cli("-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/zero3_cpu.yaml",
                   "--main_process_port", str(free_port()), "-m", "rlvsdistill", kind, "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr[-3000:]
    sizes = _partition_sizes(out / "checkpoint-2")
    total = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model).parameters())
    assert len(sizes) == 2  # one optimizer partition per process
    assert sum(sizes) >= total and max(sizes) <= total / 2 + 64  # each holds half (plus alignment padding)
    assert (out / "final" / ".complete").is_file()


def test_report_to_tensorboard_and_wandb_write_their_runs(tmp_path, tiny_model, sevens):
    """What a cluster run gets with report_to: tensorboard event files beside the checkpoints, and a W&B run
    (offline here: no network; on the cluster the wandb_secret's key makes it online)."""
    out = tmp_path / "out"
    cfg = write_yaml(tmp_path / "sft.yaml", sft_values(tiny_model, sevens / "sft.jsonl", out, max_steps=2,
                                                       save_steps=2, logging_steps=1,
                                                       report_to=["tensorboard", "wandb"]))
    proc = run_cli("-m", "rlvsdistill", "sft", "--config", str(cfg), cwd=tmp_path,
                   env={"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list(out.rglob("events.out.tfevents.*"))
    [wandb_run] = list((tmp_path / "wandb").glob("offline-run-*"))
    assert list(wandb_run.glob("*.wandb"))


def test_trainer_refuses_a_global_batch_its_processes_do_not_make(tmp_path, tiny_model, sevens):
    """global_batch_size is checked against the processes actually launched, before anything is written."""
    from rlvsdistill.config import load_config
    from rlvsdistill.io import UserError
    from rlvsdistill.train.sft import main as sft

    values = sft_values(tiny_model, sevens / "sft.jsonl", tmp_path / "out", global_batch_size=4,
                        gradient_accumulation_steps=2)  # 6 per device x 2 x 1 process = 12
    with pytest.raises(UserError, match=r"global_batch_size: the config means 4, .* = 12 .*launched with 1 process"):
        sft(load_config("sft", write_yaml(tmp_path / "s.yaml", values)))
    assert not (tmp_path / "out").exists()
