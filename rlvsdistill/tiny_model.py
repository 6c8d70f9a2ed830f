"""A tiny, randomly initialised Qwen2 model with a tokenizer trained here, saved with ``save_pretrained``.

Tests and the CPU demo load it through ``from_pretrained`` like any Hub model, without a download.
Run: ``rlvsdistill tiny-model --out DIR``.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen's ChatML layout, so chat-templated prompts work as they do with the real models.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def default_corpus(seed: int = 0, lines: int = 3000) -> list[str]:
    """Text with the shapes the tokenizer must cover: the prompt templates, arithmetic, LaTeX answers."""
    from .data import PROMPT_TEMPLATES

    rng = random.Random(seed)
    corpus = [t.format(prompt="What is 3 + 4?") for t in PROMPT_TEMPLATES.values()]
    ops = ["+", "-", "\\times"]
    for _ in range(lines):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        op = rng.choice(ops)
        value = {"+": a + b, "-": a - b, "\\times": a * b}[op]
        corpus.append(f"Compute ${a} {op} {b}$. We have ${a} {op} {b} = {value}$, so the answer is $\\boxed{{{value}}}$.")
        corpus.append(f"\\frac{{{a}}}{{{b or 1}}} \\sqrt{{{a}}} x^2 + {b}x - {a} = 0 \\left( {a}, {b} \\right)")
    return corpus


def build_tokenizer(corpus: list[str], vocab_size: int = 512):
    """A byte-level BPE tokenizer trained on ``corpus``, wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(out_dir: str | Path, seed: int = 0, hidden_size: int = 64, layers: int = 2,
                     vocab_size: int = 512, corpus: list[str] | None = None) -> Path:
    """Write a tiny Qwen2 causal LM and its tokenizer to ``out_dir``; returns the directory."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(corpus or default_corpus(seed), vocab_size)
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    logger.info("tiny model: %d parameters, vocabulary %d, saved to %s",
                sum(p.numel() for p in model.parameters()), len(tokenizer), out_dir)
    return out_dir
