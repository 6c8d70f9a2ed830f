"""GRPO with vLLM colocated (`use_vllm: true, vllm_mode: colocate`) for real, on vLLM's CPU build: a few steps, and
the weights vLLM generates with after a step are the trained ones, not the initial ones."""

import json
from importlib.util import find_spec

import pytest
import torch

from conftest import CPU, VLLM_CPU_MEMORY, write_yaml

pytestmark = [pytest.mark.vllm, pytest.mark.slow,
              pytest.mark.skipif(find_spec("vllm") is None, reason="vllm is not installed (make test installs it)")]

WATCHED = ("model.embed_tokens.weight", "model.layers.0.mlp.down_proj.weight")  # same names in transformers, vLLM


def test_grpo_colocate_generates_from_the_updated_weights(tmp_path, vllm_model, monkeypatch):
    import trl
    from transformers import TrainerCallback

    from rlvsdistill.config import load_config
    from rlvsdistill.train.grpo import main

    rows = [{"unique_id": f"p{i}", "problem": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(8)]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    seen = {}

    class Watch(TrainerCallback):
        """The trainer's weights after step 1 (vLLM must hold these while it generates for step 2)."""

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == 1:
                params = dict(model.named_parameters())
                seen["step1"] = {name: params[name].detach().clone() for name in WATCHED}

    class Recording(trl.GRPOTrainer):
        def __init__(self, *args, callbacks=(), **kwargs):
            super().__init__(*args, callbacks=[*callbacks, Watch()], **kwargs)
            params = dict(self.model.named_parameters())
            seen["initial"] = {name: params[name].detach().clone() for name in WATCHED}
            seen["trainer"] = self

    monkeypatch.setattr(trl, "GRPOTrainer", Recording)
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):  # TRL sets them for vLLM:
        monkeypatch.setenv(name, "")  # restored (unset) after the test, for the tests that launch processes
        monkeypatch.delenv(name)
    cfg = load_config("grpo", write_yaml(tmp_path / "grpo.yaml", {
        **CPU, "model_name_or_path": str(vllm_model), "dataset_name": str(tmp_path / "p.jsonl"),
        "prompt_template": "question_only", "output_dir": str(tmp_path / "out"), "answer_extract": "box",
        "use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": VLLM_CPU_MEMORY,
        "vllm_max_model_length": 256, "max_prompt_tokens": 128, "num_generations": 4,
        "per_device_train_batch_size": 4, "max_completion_length": 12, "max_steps": 2, "save_steps": 2,
        # The random model's rewards are all equal (no box), so GRPO's advantages are 0: weight decay is what
        # moves the weights at each step here.
        "learning_rate": 0.1, "weight_decay": 0.5, "beta": 0.0, "logging_steps": 1}))
    try:
        main(cfg)
    finally:  # vLLM's in-process (external_launcher) groups, so that later tests start without them
        from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

        destroy_model_parallel()
        destroy_distributed_environment()
    assert (tmp_path / "out" / "final" / ".complete").is_file()
    history = json.loads((tmp_path / "out" / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
    assert [h["step"] for h in history if "loss" in h] == [1, 2]
    llm = seen["trainer"].vllm_generation.llm
    served = dict(llm.llm_engine.model_executor.driver_worker.model_runner.model.named_parameters())
    for name in WATCHED:
        assert not torch.equal(seen["step1"][name], seen["initial"][name]), f"{name}: step 1 changed nothing"
        weight = served[name].detach()  # in vLLM's dtype (bfloat16 on CPU): the copy rounds the trainer's float32
        step1, initial = seen["step1"][name].to(weight.dtype), seen["initial"][name].to(weight.dtype)
        assert torch.equal(weight, step1), f"{name} ({weight.dtype}): vLLM does not hold step 1's weights"
        assert not torch.equal(weight, initial), f"{name}: vLLM still has the initial weights"
