"""vLLM paths: offline generation and GRPO with vLLM colocated. They need vllm and a CUDA GPU, and are skipped
elsewhere with the reason shown (`pytest -ra`). Run them on a GPU machine: `make test PYTEST_ARGS="-m vllm"`."""

import json

import pytest

from conftest import write_yaml
from rlvsdistill.generation import vllm_usable

usable, why = vllm_usable()
pytestmark = [pytest.mark.vllm, pytest.mark.gpu, pytest.mark.skipif(not usable, reason=f"vLLM path: {why}")]


def _problems(tmp_path):
    rows = [{"unique_id": f"p{i}", "problem": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(4)]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_vllm_generate_matches_the_requested_shape(tmp_path, tiny_model):
    from rlvsdistill.config import load_config
    from rlvsdistill.train.generate import main

    cfg = load_config("generate", write_yaml(tmp_path / "g.yaml", {
        "model_name_or_path": str(tiny_model), "dataset_name": str(_problems(tmp_path)), "backend": "vllm",
        "prompt_template": "question_only", "n": 8, "max_tokens": 16, "keep": "all",
        "vllm_max_model_length": 512, "output_file": str(tmp_path / "out.jsonl")}))
    stats = main(cfg)
    assert stats["samples"] == 32 and stats["kept"] == 32


def test_vllm_sampling_is_seeded_per_problem(tiny_model):
    from rlvsdistill.generation import Sampling, VLLMGenerator

    gen = VLLMGenerator(str(tiny_model), max_model_len=512)
    sampling = Sampling(n=4, max_tokens=12, seed=3)
    both = gen.generate(["a", "b"], ["p0", "p1"], sampling)
    alone = gen.generate(["b"], ["p1"], sampling)
    assert [c.text for c in both[1]] == [c.text for c in alone[0]]


def test_grpo_with_vllm_colocate(tmp_path, tiny_model):
    from rlvsdistill.config import load_config
    from rlvsdistill.train.grpo import main

    cfg = load_config("grpo", write_yaml(tmp_path / "grpo.yaml", {
        "model_name_or_path": str(tiny_model), "dataset_name": str(_problems(tmp_path)),
        "prompt_template": "question_only", "output_dir": str(tmp_path / "out"), "bf16": True,
        "use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.2,
        "vllm_max_model_length": 640, "num_generations": 4, "per_device_train_batch_size": 4,
        "max_completion_length": 16, "max_steps": 2, "save_steps": 2, "report_to": "none"}))
    main(cfg)
    assert (tmp_path / "out" / "final" / ".complete").is_file()
