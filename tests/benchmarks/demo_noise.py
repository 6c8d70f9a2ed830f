"""Run-to-run noise of the demo's headline numbers, measured over seeds on a finished `make demo`.

Re-evaluates the base model with other sampling seeds, and re-trains GRPO and distillation from the same base
with other training seeds (evaluated with seed 0, as the demo), through the same commands and configs.
Prints mean and standard deviation of held-out accuracy and pass@8 for each model; the README quotes them.

Run: .venv/bin/python tests/benchmarks/demo_noise.py [--seeds 1 2]   (after `make demo`; about 4 minutes)
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "demo"


def rlv(*args) -> None:
    subprocess.run([sys.executable, "-m", "rlvsdistill", *args], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def evaluate(demo: Path, model: Path, out: Path, seed: int) -> dict:
    if not (out / "summary.json").exists():
        rlv("eval", "--config", str(CONFIGS / "eval.yaml"), f"model_name_or_path={model}",
            f"dataset_name={demo}/task/test.jsonl", f"output_dir={out}", f"seed={seed}")
    return json.loads((out / "summary.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", default=str(ROOT / "runs" / "demo"), help="a finished demo directory")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    demo = Path(args.demo).resolve()
    noise = demo / "noise"
    results = {"base": [json.loads((demo / "eval-base/summary.json").read_text())],
               "distilled": [json.loads((demo / "eval-distilled/summary.json").read_text())],
               "grpo": [json.loads((demo / "eval-grpo/summary.json").read_text())]}
    for seed in args.seeds:
        results["base"].append(evaluate(demo, demo / "base/final", noise / f"eval-base-s{seed}", seed))
        distilled = noise / f"distilled-s{seed}"
        if not (distilled / "final/.complete").exists():
            rlv("sft", "--config", str(CONFIGS / "sft_distill.yaml"), f"model_name_or_path={demo}/base/final",
                f"dataset_name={demo}/distill.jsonl", f"output_dir={distilled}", f"seed={seed}")
        results["distilled"].append(evaluate(demo, distilled / "final", noise / f"eval-distilled-s{seed}", 0))
        grpo = noise / f"grpo-s{seed}"
        if not (grpo / "final/.complete").exists():
            rlv("grpo", "--config", str(CONFIGS / "grpo.yaml"), f"model_name_or_path={demo}/base/final",
                f"dataset_name={demo}/task/train.jsonl", f"output_dir={grpo}", f"seed={seed}")
        results["grpo"].append(evaluate(demo, grpo / "final", noise / f"eval-grpo-s{seed}", 0))
    print(f"{'model':10} {'runs':>4}  {'accuracy mean ± std':>20}  {'pass@8 mean ± std':>18}")
    for name, summaries in results.items():
        acc = [s["accuracy"] for s in summaries]
        cap = [s["pass@k:k=8&n=8"] for s in summaries]
        print(f"{name:10} {len(acc):>4}  {statistics.mean(acc):>11.3f} ± {statistics.stdev(acc):.3f}"
              f"  {statistics.mean(cap):>9.3f} ± {statistics.stdev(cap):.3f}   ({', '.join(f'{a:.3f}' for a in acc)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
