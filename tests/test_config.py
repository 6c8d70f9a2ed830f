"""Config validation: every problem reported with its key, before any model loads, nothing written."""

import pytest

from conftest import ROOT, write_yaml
from rlvsdistill.cli import main
from rlvsdistill.config import check_values, load_config, read_yaml
from rlvsdistill.io import UserError

CPU = {"use_cpu": True, "bf16": False, "report_to": "none"}


def base_grpo(tmp_path, tiny_model):
    return {"model_name_or_path": str(tiny_model), "dataset_name": "math500", "output_dir": str(tmp_path / "out"),
            "num_generations": 4, "per_device_train_batch_size": 4, **CPU}


BAD_GRPO = [
    # (change to a valid config, the key the message must name, a fragment of the message)
    ({"learning_rat": 1e-6}, "learning_rat", "unknown key"),  # a typo of a TRL key
    ({"generation_batch_size": 6}, "generation_batch_size", "not divisible by num_generations (4)"),
    ({"use_vllm": True, "vllm_max_model_length": 256, "max_prompt_tokens": 200, "max_completion_length": 128},
     "vllm_max_model_length", "below max_prompt_tokens + max_completion_length = 328"),
    ({"bf16": True}, "bf16", "no GPU with bf16 support"),  # this machine has no GPU
    ({"dataset_name": "/nonexistent/train.jsonl"}, "dataset_name", "does not exist"),
    ({"model_name_or_path": "/nonexistent/model"}, "model_name_or_path", "does not exist"),
    ({"prompt_template": "chatml"}, "prompt_template", "is not one of"),
    ({"reward_scale": "zero_one"}, "reward_scale", "expected one of"),
]


@pytest.mark.parametrize("change,key,fragment", BAD_GRPO)
def test_grpo_validation_error(tmp_path, tiny_model, capsys, change, key, fragment):
    cfg = write_yaml(tmp_path / "grpo.yaml", {**base_grpo(tmp_path, tiny_model), **change})
    assert main(["grpo", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"{key}: " in err and fragment in err and str(cfg) in err
    assert not (tmp_path / "out").exists()  # nothing written: the check comes before any output


def test_all_problems_reported_at_once(tmp_path, tiny_model):
    cfg = write_yaml(tmp_path / "grpo.yaml", {**base_grpo(tmp_path, tiny_model), "typo_a": 1, "typo_b": 2,
                                              "generation_batch_size": 6})
    with pytest.raises(UserError) as exc:
        load_config("grpo", cfg)
    assert "3 problem(s)" in str(exc.value) and "typo_a" in str(exc.value) and "typo_b" in str(exc.value)


def test_overrides_apply_and_are_checked(tmp_path, tiny_model):
    cfg = write_yaml(tmp_path / "grpo.yaml", base_grpo(tmp_path, tiny_model))
    loaded = load_config("grpo", cfg, ["learning_rate=2e-6", "max_steps=3"])
    assert loaded.learning_rate == 2e-6 and loaded.max_steps == 3
    with pytest.raises(UserError, match="not_a_key: unknown key"):
        load_config("grpo", cfg, ["not_a_key=1"])
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        load_config("grpo", cfg, ["learning_rate"])


def test_sft_and_generate_validation(tmp_path, tiny_model, capsys):
    sft = write_yaml(tmp_path / "sft.yaml", {"model_name_or_path": str(tiny_model), "output_dir": "x", **CPU})
    assert main(["sft", "--config", str(sft)]) == 2
    assert "dataset_name: required" in capsys.readouterr().err
    gen = write_yaml(tmp_path / "gen.yaml", {"model_name_or_path": str(tiny_model), "n": 0, "keep": "best"})
    assert main(["generate", "--config", str(gen)]) == 2
    err = capsys.readouterr().err
    assert "output_file: required" in err and "n: must be a positive integer" in err and "keep: expected" in err


def test_bad_yaml_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: 1\nb: [unclosed\n")
    with pytest.raises(UserError, match=r"bad.yaml:\d+: invalid YAML"):
        read_yaml(bad)


SHIPPED = sorted((ROOT / "configs").glob("*/*.yaml"))
KIND_OF = {"grpo": "grpo", "sft": "sft", "generate": "generate", "eval": "eval"}


@pytest.mark.parametrize("path", [p for p in SHIPPED if p.parent.name in ("cpu", "paper", "demo")],
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_training_configs_validate(path):
    """Every shipped job config passes the checks that do not depend on this machine's hardware or files."""
    kind = next((k for prefix, k in KIND_OF.items() if path.name.startswith(prefix)), None)
    if kind is None:
        pytest.skip(f"{path.name} is not a training/generation config")
    problems = check_values(kind, read_yaml(path), hardware=False)
    assert problems == []


def test_numbers_written_without_a_dot_are_numbers(tmp_path, tiny_model):
    """YAML 1.1 reads `1e-6` as a string; a learning rate must still be a float."""
    cfg = write_yaml(tmp_path / "g.yaml", base_grpo(tmp_path, tiny_model))
    cfg.write_text(cfg.read_text() + "learning_rate: 1e-6\n")
    assert load_config("grpo", cfg).learning_rate == 1e-6
    cfg.write_text(cfg.read_text().replace("learning_rate: 1e-6", "learning_rate: fast"))
    with pytest.raises(UserError, match="learning_rate: expected a number, got 'fast'"):
        load_config("grpo", cfg)


def test_missing_student_results_is_named(tmp_path, tiny_model, capsys):
    gen = write_yaml(tmp_path / "gen.yaml", {"model_name_or_path": str(tiny_model), "output_file": "o.jsonl",
                                             "student_results": "/nonexistent/summary.json"})
    assert main(["generate", "--config", str(gen)]) == 2
    assert "student_results: /nonexistent/summary.json does not exist" in capsys.readouterr().err
