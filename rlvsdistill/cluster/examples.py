"""The rendered manifests in k8s/examples/: readable, validated examples of every workload, and golden files
that pin the rendering of the paper's configs (a test re-renders and compares them byte for byte).

Run: make k8s-examples   (after a deliberate change to the rendering)
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..io import atomic_open
from .render import prepare_run, render_objects, to_yaml
from .settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "registry.example.org/team/rlvsdistill:0.1.0"  # what `make submit-* REGISTRY=registry.example.org/team` runs
EXAMPLES = {
    # file in k8s/examples/: (kind, job config, cluster settings, overrides)
    "grpo-job.yaml": ("grpo", "configs/paper/grpo_qwen2.5_math_1.5b.yaml", "configs/cluster/single-node.yaml", []),
    # 14 processes on two nodes: half the accumulation keeps Table 6's 280 completions per step
    "grpo-pytorchjob.yaml": ("grpo", "configs/paper/grpo_qwen2.5_3b.yaml", "configs/cluster/multi-node.yaml",
                             ["gradient_accumulation_steps=5"]),
    "sft-job.yaml": ("sft", "configs/paper/sft_qwen2.5_math_1.5b.yaml", "configs/cluster/single-node.yaml", []),
    # 16 processes cannot make Table 7's batch of 4: the example states the deviation it renders
    "sft-pytorchjob.yaml": ("sft", "configs/paper/sft_qwen2.5_3b.yaml", "configs/cluster/multi-node.yaml",
                            ["global_batch_size=16"]),
    "generate-indexed-job.yaml": ("generate", "configs/paper/generate_qwq32b_math_train.yaml",
                                  "configs/cluster/single-node.yaml", []),
    "eval-indexed-job.yaml": ("eval", "configs/paper/eval_qwen2.5_math_1.5b_math500.yaml",
                              "configs/cluster/single-node.yaml", []),
    "smoke-job.yaml": ("smoke", None, "configs/cluster/single-node.yaml", []),
}


def render_example(name: str) -> str:
    """The YAML of one example, rendered from paths relative to the repository root."""
    kind, config, cluster, overrides = EXAMPLES[name]
    run = prepare_run(kind, config, overrides, load_settings(str(ROOT / cluster)), IMAGE, cluster_path=cluster)
    return to_yaml(run, render_objects(run))


def main() -> int:
    import os

    os.chdir(ROOT)  # the configs' paths appear in the headers as written
    out = ROOT / "k8s" / "examples"
    for name in EXAMPLES:
        with atomic_open(out / name) as f:
            f.write(render_example(name))
        print(f"wrote k8s/examples/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
