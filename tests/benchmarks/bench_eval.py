"""Evaluation pipeline overhead: wall time of `eval` (generate, grade, write shards, merge, summarize) against
the time spent inside generate alone on the same prompts, with the same loaded model; target <= 10% on CPU.

On a GPU machine with vLLM, `--backend vllm --model PATH` measures samples/s of `eval` against raw vLLM
(`LLM.generate` on the same prompts) in the same way.

Run: make bench-eval   (or: .venv/bin/python tests/benchmarks/bench_eval.py [--problems 64 --n 8])
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
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--backend", default="hf", choices=("hf", "vllm"))
    parser.add_argument("--model", help="model directory (default: a tiny model built here)")
    parser.add_argument("--extract", default="box", choices=("box", "box+fallback", "free"),
                        help="answer extraction; the random tiny model writes no box, so 'free' (math-verify over "
                        "every whole response) is what loads the grader")
    args = parser.parse_args()
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

            model = str(build_tiny_model(Path(tmp) / "model"))
        cfg = EvalConfig(model_name_or_path=model, dataset_name=str(MATH500), max_problems=args.problems,
                         prompt_template="question_only", backend=args.backend, n=args.n,
                         max_tokens=args.max_tokens, output_dir=str(Path(tmp) / "run"), seed=0,
                         answer_extract=args.extract)
        generator = make_generator(args.backend, model)
        problems = load_problems(cfg.dataset_name, max_problems=cfg.max_problems)
        sampling = Sampling(cfg.n, cfg.temperature, cfg.top_p, cfg.top_k, cfg.max_tokens, cfg.seed)
        prompts = [format_prompt(cfg.prompt_template, p.problem) for p in problems]
        generator.generate(prompts[:1], [problems[0].id], sampling)  # warm-up, excluded from both
        start = time.perf_counter()
        for i in range(0, len(problems), cfg.part_size):
            generator.generate(prompts[i:i + cfg.part_size], [p.id for p in problems[i:i + cfg.part_size]], sampling)
        t_generate = time.perf_counter() - start
        start = time.perf_counter()
        run_shard(cfg, generator=generator)
        merge(cfg)
        t_eval = time.perf_counter() - start
    samples = len(problems) * cfg.n
    overhead = t_eval / t_generate - 1
    print(f"eval pipeline ({args.backend}, extract={args.extract}): {samples} samples | generate alone {t_generate:.2f}s "
          f"({samples / t_generate:.1f} samples/s) | eval {t_eval:.2f}s ({samples / t_eval:.1f} samples/s) "
          f"| overhead {overhead:+.1%} (target <= 10%) | ratio {t_generate / t_eval:.2f}x of raw generate speed")
    return 0 if overhead <= 0.10 else 1


if __name__ == "__main__":
    sys.exit(main())
