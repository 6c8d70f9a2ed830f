"""Comparison report of evaluation runs: Markdown tables and PNG plots in the spirit of the paper's figures.

Input: run directories with a merged ``summary.json`` (the first is the base model). Every number in the report
is read from those files: accuracy vs capability, pass@k curves, mean success per difficulty bin of the base
model, transitions of problems between bins (base -> each other run), lengths and reflection keywords.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from .evaluate import load_summary
from .io import UserError, atomic_open
from .metrics import bin_index, bin_label, difficulty_bins, transition_matrix

logger = logging.getLogger(__name__)

_PASS_KEY = re.compile(r"pass@k:k=(\d+)&n=(\d+)")


def pass_curve(summary: dict) -> dict[int, float]:
    """{k: pass@k} from a summary's ``pass@k:k=K&n=N`` keys."""
    return {int(m.group(1)): v for key, v in summary.items() if (m := _PASS_KEY.fullmatch(key))}


def samples_per_problem(summary: dict) -> int:
    n = summary["samples_per_problem"]
    return n if isinstance(n, int) else n["min"]


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _savefig(fig, path: Path) -> None:
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120, bbox_inches="tight")


def build_report(run_dirs: list[str], out_dir: str) -> Path:
    """Write ``report.md`` and its PNGs to ``out_dir``; returns the Markdown path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not run_dirs:
        raise UserError("report: give at least one run directory (the first is the base model)")
    runs = [(Path(d).name, load_summary(d)) for d in run_dirs]
    names = [name for name, _ in runs]
    if len(set(names)) != len(names):
        raise UserError(f"report: run directory names must differ to label them: {names}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base_name, base = runs[0]
    md = [f"# Accuracy and capability: {', '.join(names)}", "",
          f"Base model: **{base_name}**. Numbers are read from each run's `summary.json`.", ""]

    # Accuracy vs capability.
    rows = []
    for name, s in runs:
        n = samples_per_problem(s)
        curve = pass_curve(s)
        rows.append([name, s.get("run", {}).get("model", "-"), s["problems"], n, s["accuracy"], curve.get(n),
                     s.get(f"maj@n:n={n}"), s["verdicts"]["no_answer"]])
    md += ["## Accuracy (pass@1) and capability (pass@n)", "",
           _table(["run", "model", "problems", "n", "accuracy", "pass@n", "maj@n", "no answer"], rows), ""]

    # pass@k curves.
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, s in runs:
        curve = pass_curve(s)
        ax.plot(list(curve), list(curve.values()), marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k")
    ax.set_title("pass@k")
    ax.grid(alpha=0.3)
    ax.legend()
    _savefig(fig, out / "pass_at_k.png")
    plt.close(fig)
    ks = sorted(set().union(*(pass_curve(s) for _, s in runs)))
    md += ["## pass@k", "", "![pass@k](pass_at_k.png)", "",
           _table(["run"] + [f"pass@{k}" for k in ks], [[name] + [pass_curve(s).get(k) for k in ks]
                                                        for name, s in runs]), ""]

    # Mean success per difficulty bin of the base model.
    base_counts = base["correct_counts"]
    base_n = samples_per_problem(base)
    bins = difficulty_bins(base_n)
    labels = [bin_label(b) for b in bins]
    members = [[pid for pid, c in base_counts.items() if bin_index(c, bins) == i] for i in range(len(bins))]
    success_rows, series = [], {}
    for name, s in runs:
        n = samples_per_problem(s)
        counts = s["correct_counts"]
        means = []
        for pids in members:
            shared = [counts[p] / n for p in pids if p in counts]
            means.append(sum(shared) / len(shared) if shared else None)
        series[name] = means
        success_rows.append([name] + means)
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(runs)
    for j, (name, means) in enumerate(series.items()):
        ax.bar([i + j * width for i in range(len(bins))], [m or 0 for m in means], width, label=name)
    ax.set_xticks([i + width * (len(runs) - 1) / 2 for i in range(len(bins))], labels)
    ax.set_xlabel(f"base model's correct count out of {base_n} ({base_name})")
    ax.set_ylabel("mean success rate")
    ax.legend()
    _savefig(fig, out / "success_by_bin.png")
    plt.close(fig)
    md += ["## Mean success per difficulty bin of the base model", "", "![success by bin](success_by_bin.png)", "",
           _table(["run"] + [f"bin {label} ({len(p)} problems)" for label, p in zip(labels, members)],
                  success_rows), ""]

    # Transitions base -> other.
    for name, s in runs[1:]:
        if samples_per_problem(s) != base_n:
            md += [f"## Transitions {base_name} -> {name}", "",
                   f"Not drawn: {name} has n = {samples_per_problem(s)}, the base n = {base_n}.", ""]
            continue
        matrix = transition_matrix(base_counts, s["correct_counts"], bins)
        fig, ax = plt.subplots(figsize=(5, 4))
        im = ax.imshow(matrix, cmap="Blues")
        for i, row in enumerate(matrix):
            for j, v in enumerate(row):
                dark = v > max(max(r) for r in matrix) / 2
                ax.text(j, i, str(v), ha="center", va="center", fontsize=8, color="white" if dark else "black")
        ax.set_xticks(range(len(labels)), labels)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel(f"{name}: correct count")
        ax.set_ylabel(f"{base_name}: correct count")
        fig.colorbar(im, ax=ax)
        png = f"transitions_{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.png"
        _savefig(fig, out / png)
        plt.close(fig)
        md += [f"## Transitions {base_name} -> {name}", "", f"![transitions]({png})", "",
               _table([f"{base_name} \\ {name}"] + labels, [[labels[i]] + row for i, row in enumerate(matrix)]), ""]

    # Lengths and keywords.
    unit = base.get("length_unit", "chars")
    md += [f"## Response length ({unit}) and reflection keywords by correctness", "",
           _table(["run", "mean length, correct", "mean length, wrong"],
                  [[name, s["length"]["mean_correct"], s["length"]["mean_wrong"]] for name, s in runs]), ""]
    keywords = list(base["keywords_per_response"])
    md += [_table(["run", "answers"] + keywords,
                  [[name, side] + [s["keywords_per_response"][kw][side] for kw in keywords]
                   for name, s in runs for side in ("correct", "wrong")]), ""]
    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.8 / len(runs)
    for j, (name, s) in enumerate(runs):
        vals = [s["length"]["mean_correct"] or 0, s["length"]["mean_wrong"] or 0]
        ax.bar([i + j * width for i in range(2)], vals, width, label=name)
    ax.set_xticks([i + width * (len(runs) - 1) / 2 for i in range(2)], ["correct", "wrong"])
    ax.set_ylabel(f"mean response length ({unit})")
    ax.legend()
    _savefig(fig, out / "length.png")
    plt.close(fig)
    md += ["![length](length.png)", ""]

    report = out / "report.md"
    with atomic_open(report) as f:
        f.write("\n".join(md))
    logger.info("report written to %s", report)
    return report
