"""HF generation backend: n samples per prompt, seeded per problem so batching and sharding do not matter."""

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
