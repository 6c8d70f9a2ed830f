"""HF generation backend: n samples per prompt, seeded per problem so batching and sharding do not matter."""

import pytest

from rlvsdistill.generation import HFGenerator, Sampling, problem_seed


def test_problem_seed_is_stable_and_distinct():
    assert problem_seed(0, "p1") == problem_seed(0, "p1")
    assert len({problem_seed(0, f"p{i}") for i in range(100)}) == 100
    assert problem_seed(0, "p1") != problem_seed(1, "p1")


def test_samples_do_not_depend_on_batch_company(tiny_model):
    gen = HFGenerator(str(tiny_model))
    sampling = Sampling(n=3, max_tokens=10, seed=7)
    both = gen.generate(["Compute 1 + 1.", "Compute 2 + 2."], ["p0", "p1"], sampling)
    alone = gen.generate(["Compute 2 + 2."], ["p1"], sampling)
    assert len(both) == 2 and all(len(s) == 3 for s in both)
    assert [c.text for c in both[1]] == [c.text for c in alone[0]]
    assert all(0 < c.num_tokens <= 10 for s in both for c in s)


def test_chat_template_prompt_uses_the_models_own_template(tiny_model):
    from transformers import AutoTokenizer

    from rlvsdistill.data import CHAT_INSTRUCTION, format_prompt
    from rlvsdistill.io import UserError

    tok = AutoTokenizer.from_pretrained(tiny_model)
    prompt = format_prompt("chat", "What is 2 + 2?", tok)
    assert prompt == f"<|im_start|>user\nWhat is 2 + 2?\n{CHAT_INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(UserError, match="needs a model whose tokenizer has a chat template"):
        format_prompt("chat", "What is 2 + 2?", None)
