"""Evaluation pipeline overhead: wall time of `eval` (generate, grade, write shards, merge, summarize) against
the time spent inside generate alone on the same prompts, with the same loaded model; target <= 10% on CPU.

`--backend vllm` measures samples/s of `eval` against raw vLLM: one `LLM.generate` call over all the prompts with
the same per-problem SamplingParams (so the very same samples, which is checked), in the same run, on the same
engine; target >= 90% of raw. Its default size (64 problems x 64 samples, 64 tokens: about 35 s of raw generation
on 2 CPU cores) is what amortizes the pipeline's fixed costs as a real eval does: about 1.6 s here for starting the
grader workers (which, in a real run, start while the model loads), the run record and the merge; at 8 samples
per problem they alone cost a third of a 2.4 s run. On CPU (vLLM's CPU build, as `make test` installs) the tiny
model is built at hidden 128 (vLLM's CPU attention needs a head size >= 32); on a GPU machine pass
`--model PATH --memory 0.9`.

Run: make bench-eval, make bench-vllm   (or: .venv/bin/python tests/benchmarks/bench_eval.py [--problems 64 --n 8])
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

MATH500 = HERE.parents[2] / "shared" / "data" / "math500" / "test.jsonl"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--n", type=int, help="samples per problem (default: 8 on hf, 64 on vllm)")
    parser.add_argument("--max-tokens", type=int, help="tokens per sample (default: 48 on hf, 64 on vllm)")
    parser.add_argument("--part-size", type=int, default=8, help="problems per part (the config's part_size)")
    parser.add_argument("--backend", default="hf", choices=("hf", "vllm"))
    parser.add_argument("--model", help="model directory (default: a tiny model built here)")
    parser.add_argument("--memory", type=float, default=0.15,
                        help="vLLM's vllm_gpu_memory_utilization (of RAM on vLLM's CPU build)")
    parser.add_argument("--extract", default="box", choices=("box", "box+fallback", "free"),
                        help="answer extraction; the random tiny model writes no box, so 'free' (math-verify over "
                        "every whole response) is what loads the grader")
    args = parser.parse_args()
    vllm = args.backend == "vllm"
    args.n = args.n or (64 if vllm else 8)
    args.max_tokens = args.max_tokens or (64 if vllm else 48)
    # Imported here, not at the top: the grader's worker processes re-import this script as __mp_main__,
    # and a script that imports torch at the top makes each of them import torch too.
    from rlvsdistill.config import EvalConfig
    from rlvsdistill.data import format_prompt, load_problems
    from rlvsdistill.evaluate import merge, run_shard
    from rlvsdistill.generation import Sampling, make_generator

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from rlvsdistill.tiny_model import build_tiny_model

            model = str(build_tiny_model(Path(tmp) / "model", hidden_size=128 if args.backend == "vllm" else 64))
        cfg = EvalConfig(model_name_or_path=model, dataset_name=str(MATH500), max_problems=args.problems,
                         prompt_template="question_only", backend=args.backend, n=args.n,
                         max_tokens=args.max_tokens, output_dir=str(Path(tmp) / "run"), seed=0,
                         answer_extract=args.extract, part_size=args.part_size)
        generator = make_generator(args.backend, model, max_model_len=1024, gpu_memory_utilization=args.memory)
        problems = load_problems(cfg.dataset_name, max_problems=cfg.max_problems)
        sampling = Sampling(cfg.n, cfg.temperature, cfg.top_p, cfg.top_k, cfg.max_tokens, cfg.seed)
        prompts = [format_prompt(cfg.prompt_template, p.problem, getattr(generator, "tokenizer", None))
                   for p in problems]
        generator.generate(prompts[:1], [problems[0].id], sampling)  # warm-up, excluded from both
        start = time.perf_counter()
        if args.backend == "vllm":
            raw = raw_vllm(generator.llm, prompts, [p.id for p in problems], sampling)
        else:
            for i in range(0, len(problems), cfg.part_size):
                generator.generate(prompts[i:i + cfg.part_size], [p.id for p in problems[i:i + cfg.part_size]],
                                   sampling)
        t_generate = time.perf_counter() - start
        start = time.perf_counter()
        run_shard(cfg, generator=generator)
        merge(cfg)
        t_eval = time.perf_counter() - start
        if args.backend == "vllm":  # the same work: the pipeline wrote exactly raw vLLM's samples
            import json

            with open(Path(cfg.output_dir) / "samples.jsonl") as f:
                written = [json.loads(line)["response"] for line in f]
            assert written == raw, "the eval pipeline's samples differ from raw LLM.generate's"
    samples = len(problems) * cfg.n
    overhead = t_eval / t_generate - 1
    baseline = "raw LLM.generate" if args.backend == "vllm" else "generate alone"
    print(f"eval pipeline ({args.backend}, extract={args.extract}, part_size={cfg.part_size}): {samples} samples | {baseline} {t_generate:.2f}s "
          f"({samples / t_generate:.1f} samples/s) | eval {t_eval:.2f}s ({samples / t_eval:.1f} samples/s) "
          f"| overhead {overhead:+.1%} | ratio {t_generate / t_eval:.2f}x of {baseline}'s samples/s "
          f"(target {'>= 0.90' if args.backend == 'vllm' else 'overhead <= 10%'})")
    if args.backend == "vllm":
        return 0 if t_generate / t_eval >= 0.90 else 1
    return 0 if overhead <= 0.10 else 1


def raw_vllm(llm, prompts, problem_ids, sampling) -> list[str]:
    """Plain vLLM: one LLM.generate over every prompt, with the pipeline's per-problem seeds."""
    from vllm import SamplingParams

    from rlvsdistill.generation import problem_seed

    params = [SamplingParams(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                             top_k=sampling.top_k, max_tokens=sampling.max_tokens, seed=problem_seed(sampling.seed, pid))
              for pid in problem_ids]
    return [o.text for r in llm.generate(prompts, params, use_tqdm=False) for o in r.outputs]


if __name__ == "__main__":
    sys.exit(main())
