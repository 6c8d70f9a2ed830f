"""Sampling n completions per prompt, behind one small interface: vLLM offline on GPUs, HF ``generate`` on CPU.

Each problem gets its own seed (``problem_seed``), so a problem's samples do not depend on which other problems
share its batch, shard or pod: a sharded, restarted run reproduces an unsharded one.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Protocol

from .io import UserError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters (the paper: n = 256, temperature 0.9, top_p 1.0, top_k 50)."""

    n: int = 1
    temperature: float = 0.9
    top_p: float = 1.0
    top_k: int = 50
    max_tokens: int = 1024
    seed: int = 0


@dataclass(frozen=True)
class Completion:
    text: str
    num_tokens: int


def problem_seed(seed: int, problem_id: str) -> int:
    """A 31-bit seed derived from the run seed and the problem id (stable across processes and machines)."""
    digest = hashlib.sha256(f"{seed}:{problem_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class Generator(Protocol):
    def generate(self, prompts: list[str], problem_ids: list[str], sampling: Sampling) -> list[list[Completion]]:
        """n completions for each prompt, in order."""
        ...


class HFGenerator:
    """Transformers ``generate``, one problem at a time with ``num_return_sequences = n`` (no padding effects)."""

    def __init__(self, model: str, revision: str | None = None, device: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(model, revision=revision)
        self.model = AutoModelForCausalLM.from_pretrained(model, revision=revision).to(self.device).eval()

    def generate(self, prompts, problem_ids, sampling):
        import torch

        out = []
        for prompt, pid in zip(prompts, problem_ids):
            enc = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(self.device)
            torch.manual_seed(problem_seed(sampling.seed, pid))
            with torch.no_grad():
                ids = self.model.generate(
                    **enc,
                    do_sample=sampling.temperature > 0,
                    temperature=sampling.temperature if sampling.temperature > 0 else None,
                    top_p=sampling.top_p,
                    top_k=sampling.top_k,
                    max_new_tokens=sampling.max_tokens,
                    num_return_sequences=sampling.n,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            new = ids[:, enc["input_ids"].shape[1]:]
            completions = []
            for row in new:
                row = row.tolist()
                # Count tokens up to and including EOS; padding after it is not part of the completion.
                eos = self.tokenizer.eos_token_id
                length = row.index(eos) + 1 if eos in row else len(row)
                completions.append(Completion(self.tokenizer.decode(row[:length], skip_special_tokens=True), length))
            out.append(completions)
        return out


class VLLMGenerator:
    """vLLM offline ``LLM.generate`` with n samples per prompt and a per-problem seed (CUDA, or vLLM's CPU build)."""

    def __init__(self, model: str, revision: str | None = None, tensor_parallel_size: int = 1,
                 max_model_len: int | None = None, gpu_memory_utilization: float = 0.9):
        check_vllm_settings(model, revision, gpu_memory_utilization)
        import torch
        from vllm import LLM

        # vLLM's CPU build fails a seeded request whose prompt is split over steps (chunked prefill): it rewinds
        # the request's torch.Generator with set_offset, which CPU generators lack ("CPU Generator does not use
        # offset"). Whole prompts only, there.
        cpu = {} if torch.cuda.is_available() else {"enable_chunked_prefill": False}
        self.llm = LLM(model=model, revision=revision, tensor_parallel_size=tensor_parallel_size,
                       max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization, **cpu)
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, prompts, problem_ids, sampling):
        from vllm import SamplingParams

        params = [
            SamplingParams(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
                           max_tokens=sampling.max_tokens, seed=problem_seed(sampling.seed, pid))
            for pid in problem_ids
        ]
        results = self.llm.generate(prompts, params)
        return [[Completion(o.text, len(o.token_ids)) for o in r.outputs] for r in results]


def _meminfo_bytes(key: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise UserError(f"/proc/meminfo has no {key}")


def check_vllm_settings(model: str, revision: str | None, gpu_memory_utilization: float,
                        memory_key: str = "vllm_gpu_memory_utilization") -> None:
    """Refuse, before vLLM starts, what its CPU build would refuse with a traceback from inside its engine process:
    a head size its CPU attention lacks, and a memory fraction (of RAM, on CPU) larger than what is free."""
    import torch

    if not 0 < gpu_memory_utilization <= 1:
        raise UserError(f"{memory_key}: {gpu_memory_utilization} is not a fraction in (0, 1]")
    if torch.cuda.is_available():
        return
    from transformers import AutoConfig
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    config = AutoConfig.from_pretrained(model, revision=revision)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    sizes = CPUAttentionBackend.get_supported_head_sizes()
    if head_dim not in sizes:
        raise UserError(f"model_name_or_path: {model} has head size {head_dim} (hidden_size / num_attention_heads), "
                        f"which vLLM's CPU attention does not support (it supports {sizes}); use backend: hf")
    total, free = _meminfo_bytes("MemTotal"), _meminfo_bytes("MemAvailable")
    if gpu_memory_utilization * total > free:
        raise UserError(f"{memory_key}: {gpu_memory_utilization} of this machine's {total / 2**30:.1f} GiB of RAM "
                        f"(vLLM's CPU build reserves that fraction of RAM) is more than the {free / 2**30:.1f} GiB "
                        f"available; use at most {free / total:.2f}")


def keep_vllm_cpu_weights_reloadable() -> None:
    """vLLM's CPU build repacks each linear layer's weight for oneDNN when it loads a model and drops the original
    (an empty Parameter without ``weight_loader``), so TRL's colocated weight sync (``load_weights`` after each
    step) fails with "'Parameter' object has no attribute 'weight_loader'", and the packed copy would never see new
    weights anyway. In this process, make those layers use plain ``torch.nn.functional.linear`` on their own
    weight, vLLM's own fallback (its MLA ``_cpu_skip_gemm_dispatch``): slower, but trained weights are served.
    Only on CPU; call before vLLM loads the model."""
    import torch
    from vllm.model_executor.layers import utils

    def plain_linear(layer, remove_weight: bool) -> None:
        layer.cpu_linear = torch.nn.functional.linear

    utils.dispatch_cpu_unquantized_gemm = plain_linear
    logger.warning("vLLM CPU build: linear layers run unpacked (torch linear) so that GRPO can sync weights into it")


def vllm_usable() -> tuple[bool, str]:
    """(True, '') when vLLM can run here, else (False, the reason)."""
    try:
        import torch
    except ImportError:
        return False, "torch is not installed"
    if not torch.cuda.is_available():
        return False, "no CUDA GPU"
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False, "vllm is not installed"
    return True, ""


def make_generator(backend: str, model: str, revision: str | None = None, tensor_parallel_size: int = 1,
                   max_model_len: int | None = None, gpu_memory_utilization: float = 0.9) -> Generator:
    """``vllm``, ``hf``, or ``auto`` (vLLM when it can run here, else HF)."""
    if backend == "auto":
        ok, why = vllm_usable()
        backend = "vllm" if ok else "hf"
        if not ok:
            logger.info("generation backend: hf (%s)", why)
    if backend == "vllm":
        return VLLMGenerator(model, revision, tensor_parallel_size, max_model_len, gpu_memory_utilization)
    if backend == "hf":
        return HFGenerator(model, revision)
    raise ValueError(f"unknown generation backend {backend!r}; expected auto, vllm or hf")
