"""The paper's reference numbers, for ``rlvsdistill report --paper``.

Kim et al. 2025, *Reinforcement Learning vs. Distillation: Understanding Accuracy and Capability in LLM
Reasoning* (arXiv 2505.14216 v2), Table 3 (A.2): base vs RL with 256 samples per question; Table 4 (A.5):
self-distillation, accuracy on the training and test splits.
"""

from __future__ import annotations

MODELS = {"qwen2.5-math-1.5b": "Qwen2.5-Math-1.5B", "qwen2.5-3b": "Qwen2.5-3B"}
SPLITS = {"math500": "MATH-500", "math-train": "MATH train"}
SPLIT_DATASETS = {"math500": "math500", "math-train": "math_train"}  # the eval configs' dataset_name of each split

# (model, split) -> {row: (accuracy, maj@256, pass@256)}, in percent as printed.
TABLE3: dict[tuple[str, str], dict[str, tuple[float, float, float]]] = {
    ("qwen2.5-math-1.5b", "math-train"): {"base": (64.0, 76.8, 97.2), "RL": (80.9, 82.1, 97.1)},
    ("qwen2.5-math-1.5b", "math500"): {"base": (60.6, 72.0, 97.2), "RL": (74.2, 80.8, 97.0)},
    ("qwen2.5-3b", "math-train"): {"base": (59.3, 80.9, 92.7), "RL": (67.9, 82.2, 92.1)},
    ("qwen2.5-3b", "math500"): {"base": (54.9, 76.5, 95.8), "RL": (63.6, 79.5, 95.8)},
}

# What the paper's "RL" row is, per model.
RL_MODEL = {
    "qwen2.5-math-1.5b": "the public sail/Qwen2.5-Math-1.5B-Oat-Zero (Dr. GRPO on MATH train), not a run of the paper's",
    "qwen2.5-3b": "the paper's own GRPO run on MATH train",
}

# Table 4's rows: model -> {(student, teacher): (train accuracy, test accuracy)}, in percent as printed; teacher
# "-" is the model itself, undistilled. (The 1.5B base's test accuracy is 62.6% here, 60.6% in Table 3, as printed.)
TABLE4: dict[str, dict[tuple[str, str], tuple[float, float]]] = {
    "qwen2.5-math-1.5b": {("base", "-"): (64.0, 62.6), ("base", "base"): (74.7, 63.4), ("RL", "-"): (80.9, 74.8),
                          ("RL", "RL"): (84.4, 74.4), ("base", "RL"): (80.5, 74.2)},
    "qwen2.5-3b": {("base", "-"): (59.3, 54.9), ("base", "base"): (73.6, 58.7), ("RL", "-"): (67.9, 63.6),
                   ("RL", "RL"): (72.1, 64.4), ("base", "RL"): (73.6, 64.5)},
}
TABLE4_SPLITS = {"train": "math-train", "test": "math500"}  # Table 4's columns, as Table 3's splits
