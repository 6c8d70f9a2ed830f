"""Comparison report of evaluation runs: Markdown tables and PNG panels of the paper's figures.

Input: run directories with a merged ``summary.json`` (the first is the base model). Every number comes from the
runs' per-problem blocks (``metrics.ProblemStats.block``), joined on the problem id:

- accuracy, maj@n and pass@n (optionally beside the paper's Table 3 row, ``--paper``), and pass@k curves;
- Figure 8: mean success per bin of the *base* model's correct count, and its change against the base;
- Figure 9: transitions of problems between bins (base -> each other run);
- Figure 10: answer entropy per base bin, over all responses and split by correctness;
- Figures 13 and 14: response length and reflection keywords per base bin, split by correctness.

Every figure bins by the paper's main-text binning (``paper-main``) unless ``bins`` names another for all, or is
``figures``: each figure in its appendix binning (``FIGURE_BINNINGS``).
``hardest=K`` restricts everything to the K problems the base solves least often.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from . import paper
from .evaluate import load_summary
from .io import UserError, atomic_open
from .metrics import (
    NAMED_BINNINGS,
    PAPER_N,
    Bin,
    bin_index,
    bin_label,
    default_ks,
    pass_at_k,
    pool_problem_blocks,
    resolve_bins,
    transition_matrix,
)

logger = logging.getLogger(__name__)

# The binning of every figure by default: the main text's (its figures bin problems this way); the appendix
# draws each figure in its own, ``FIGURE_BINNINGS``, which ``bins="figures"`` selects.
DEFAULT_BINS = "paper-main"
PER_FIGURE = "figures"
FIGURE_BINNINGS = {"fig8": "paper-fig8", "fig10": "paper-fig10", "a6": "paper-a6"}
SIDES = ("correct", "wrong")
BLOCK_KEYS = ("answer_entropy_by_correctness",)  # per_problem keys that older summaries lack
# How a summary measured its responses (the value when an older summary does not say): runs must agree.
MEASURES = {"length_unit": "chars", "keyword_match": "word"}


@dataclass
class Run:
    """One evaluation run: its directory name, summary.json and per-problem blocks (possibly restricted)."""

    name: str
    summary: dict
    problems: dict[str, dict]

    @property
    def n(self) -> int:
        """Samples per problem (the smallest, if they differ)."""
        return min(p["n"] for p in self.problems.values())

    def pooled(self, ids=None) -> dict:
        """``pool_problem_blocks`` over the given problem ids that this run has (default: all of its problems)."""
        ids = self.problems if ids is None else [i for i in ids if i in self.problems]
        return pool_problem_blocks((self.problems[i] for i in ids), self.summary["keywords"])

    def pass_curve(self) -> dict[int, float]:
        """{k: mean pass@k} for k = 1, 2, 4, ... n over this run's problems."""
        stats = self.problems.values()
        return {k: sum(pass_at_k(p["n"], p["correct"], k) for p in stats) / len(stats) for k in default_ks(self.n)}


@dataclass
class Strata:
    """Problems grouped by the base run's correct count under one binning."""

    title: str  # e.g. "paper-fig8" or the explicit edges
    bins: list[Bin]
    members: list[list[str]]  # problem ids of each bin

    @property
    def labels(self) -> list[str]:
        return [bin_label(b) for b in self.bins]

    def pooled(self, run: Run) -> list[dict]:
        """The run's pooled stats in each bin (over the bin's problems the run has)."""
        return [run.pooled(ids) for ids in self.members]


def load_runs(run_dirs: list[str]) -> list[Run]:
    """Read each run's summary.json; errors name the run directory."""
    if not run_dirs:
        raise UserError("report: give at least one run directory (the first is the base model)")
    runs = []
    for d in run_dirs:
        summary = load_summary(d)
        blocks = summary.get("per_problem")
        lacking = ["per_problem block"] if not isinstance(blocks, dict) else [
            f"{key!r} in its per_problem blocks" for key in BLOCK_KEYS if key not in next(iter(blocks.values()), {})]
        if lacking:
            raise UserError(f"{d}/summary.json has no {lacking[0]} (written by an older rlvsdistill); "
                            "run `rlvsdistill eval-merge` (or `grade`) again to rewrite it")
        runs.append(Run(Path(d).name, summary, summary["per_problem"]))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise UserError(f"report: run directory names must differ to label them: {names}")
    for r in runs[1:]:
        if r.summary["keywords"] != runs[0].summary["keywords"]:
            raise UserError(f"report: {r.name} counted other reflection keywords than {runs[0].name}; "
                            "merge both with the same keyword list")
        for key, default in MEASURES.items():
            theirs, base = r.summary.get(key, default), runs[0].summary.get(key, default)
            if theirs != base:
                raise UserError(f"report: {r.name} has {key}: {theirs}, {runs[0].name} {key}: {base}; merge both "
                                f"with the same {key} (a config key of eval-merge, an option of grade)")
    return runs


def hardest_problems(base: Run, k: int) -> list[str]:
    """The k problems the base solves least often: by correct share, ties by problem id."""
    if not 1 <= k <= len(base.problems):
        raise UserError(f"--hardest {k}: the base run {base.name} has {len(base.problems)} problems")
    return sorted(base.problems, key=lambda i: (base.problems[i]["correct"] / base.problems[i]["n"], i))[:k]


def stratify(base: Run, spec: str) -> Strata:
    """Group the base run's problems by its correct count under a binning name or explicit edges."""
    try:
        bins = resolve_bins(spec, base.n)
    except ValueError as exc:
        raise UserError(f"--bins: {exc}") from None
    members: list[list[str]] = [[] for _ in bins]
    for pid, p in base.problems.items():
        # A problem with more samples than the smallest n (possible in `grade` output) is placed by its share.
        members[bin_index(round(p["correct"] * base.n / p["n"]), bins)].append(pid)
    return Strata(spec, bins, members)


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _png(out: Path, name: str, fig) -> str:
    """Save the figure atomically as ``out/name`` and close it; returns the name for the Markdown link."""
    import matplotlib.pyplot as plt

    with atomic_open(out / name, "wb") as f:
        fig.savefig(f, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return name


def _bar_panels(panels: dict[str, dict[str, list]], labels: list[str], xlabel: str, ylabel: str):
    """A figure with one subplot per panel (title -> {run: value per label}), grouped bars per label; a run keeps
    its colour across panels (the order of the first panel)."""
    import matplotlib.pyplot as plt

    colors = {name: f"C{i}" for i, name in enumerate(next(iter(panels.values())))}
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4), squeeze=False)
    for ax, (title, series) in zip(axes[0], panels.items()):
        width = 0.8 / max(1, len(series))
        for j, (name, values) in enumerate(series.items()):
            ax.bar([i + j * width for i in range(len(labels))], [0 if v is None else v for v in values], width,
                   label=name, color=colors.get(name))
        ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(labels))], labels, rotation=30,
                      fontsize=8)
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        ax.legend(fontsize=8)
    return fig


class Report:
    """Builds report.md section by section; each ``section_*`` method returns its Markdown lines."""

    def __init__(self, runs: list[Run], out: Path, bins: str | None):
        self.runs, self.out, self.bins = runs, out, bins or DEFAULT_BINS
        self.base = runs[0]
        self.keywords = self.base.summary["keywords"]
        self.unit = self.base.summary.get("length_unit", MEASURES["length_unit"])
        self.keyword_match = self.base.summary.get("keyword_match", MEASURES["keyword_match"])

    def strata(self, figure: str) -> Strata:
        return stratify(self.base, FIGURE_BINNINGS[figure] if self.bins == PER_FIGURE else self.bins)

    def bin_axis(self, strata: Strata) -> str:
        return f"{self.base.name}'s correct count out of {self.base.n} ({strata.title})"

    def bin_header(self, strata: Strata) -> list[str]:
        return [f"{label} ({len(ids)})" for label, ids in zip(strata.labels, strata.members)]

    def section_accuracy(self) -> list[str]:
        rows = []
        for r in self.runs:
            pooled, n = r.pooled(), r.n
            rows.append([r.name, r.summary.get("run", {}).get("model", "-"), pooled["problems"], n,
                         pooled["accuracy"], r.pass_curve()[n], pooled["maj"], r.summary["verdicts"]["no_answer"]])
        return ["## Accuracy (pass@1) and capability (pass@n)", "",
                _table(["run", "model", "problems", "n", "accuracy", "pass@n", "maj@n", "no-answer samples (whole run)"],
                       rows), ""]

    def section_paper(self, model: str, split: str) -> list[str]:
        rows = [[f"paper: {paper.MODELS[model]} {row}", PAPER_N, *(f"{v:.1f}%" for v in values)]
                for row, values in paper.TABLE3[(model, split)].items()]
        for r in self.runs:
            pooled = r.pooled()
            rows.append([r.name, r.n, *(f"{100 * v:.1f}%" for v in (pooled["accuracy"], pooled["maj"],
                                                                  r.pass_curve()[r.n]))])
        notes = [f"The paper's RL model for {paper.MODELS[model]} is {paper.RL_MODEL[model]}."]
        dataset = paper.SPLIT_DATASETS[split]
        elsewhere = [r.name for r in self.runs if r.summary.get("run", {}).get("dataset") not in (None, dataset)]
        if elsewhere:
            notes.append(f"Not evaluated on {paper.SPLITS[split]} ({dataset}), so not comparable with these rows: "
                         f"{', '.join(elsewhere)} (pick the split with --paper-split).")
        if any(r.n != PAPER_N for r in self.runs):
            notes.append(f"Runs with n != {PAPER_N} show maj@n and pass@n, which are not comparable with @256.")
        if len(self.base.problems) != len(self.base.summary["per_problem"]):
            notes.append("The paper's rows are over all problems; this report's runs are restricted (--hardest).")
        return [f"## Compared with the paper (Table 3, {paper.SPLITS[split]})", "",
                _table(["model", "n", "accuracy", "maj@n", "pass@n"], rows), "", *[x for n in notes for x in (n, "")]]

    def section_pass_at_k(self) -> list[str]:
        import matplotlib.pyplot as plt

        curves = {r.name: r.pass_curve() for r in self.runs}
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, curve in curves.items():
            ax.plot(list(curve), list(curve.values()), marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set(xlabel="k", ylabel="pass@k", title="pass@k")
        ax.grid(alpha=0.3)
        ax.legend()
        png = _png(self.out, "pass_at_k.png", fig)
        ks = sorted(set().union(*curves.values()))
        return ["## pass@k", "", f"![pass@k]({png})", "",
                _table(["run"] + [f"pass@{k}" for k in ks], [[name] + [c.get(k) for k in ks]
                                                             for name, c in curves.items()]), ""]

    def section_success(self) -> list[str]:
        strata = self.strata("fig8")
        success = {r.name: [p["accuracy"] for p in strata.pooled(r)] for r in self.runs}
        base = success[self.base.name]
        change = {name: [None if v is None or b is None else v - b for v, b in zip(values, base)]
                  for name, values in success.items() if name != self.base.name}
        panels = {"mean success rate": success}
        if change:
            panels[f"change against {self.base.name}"] = change
        png = _png(self.out, "success_by_bin.png", _bar_panels(panels, strata.labels, self.bin_axis(strata), "success rate"))
        rows = [[name] + values for name, values in success.items()]
        rows += [[f"{name} - {self.base.name}"] + values for name, values in change.items()]
        return [f"## Figure 8: mean success per bin of {self.base.name}'s correct count", "",
                f"![Figure 8: success by bin]({png})", "",
                _table(["run \\ bin (problems)"] + self.bin_header(strata), rows), ""]

    def section_transitions(self) -> list[str]:
        import matplotlib.pyplot as plt

        strata, md = self.strata("fig8"), []
        base_counts = {i: p["correct"] for i, p in self.base.problems.items()}
        for r in self.runs[1:]:
            title = f"## Figure 9: transitions {self.base.name} -> {r.name}"
            if r.n != self.base.n:
                md += [title, "", f"Not drawn: {r.name} has n = {r.n}, the base n = {self.base.n}.", ""]
                continue
            matrix = transition_matrix(base_counts, {i: p["correct"] for i, p in r.problems.items()}, strata.bins)
            fig, ax = plt.subplots(figsize=(5, 4))
            im = ax.imshow(matrix, cmap="Blues")
            top = max(max(row) for row in matrix)
            for i, row in enumerate(matrix):
                for j, v in enumerate(row):
                    ax.text(j, i, str(v), ha="center", va="center", fontsize=8,
                            color="white" if v > top / 2 else "black")
            ax.set_xticks(range(len(strata.labels)), strata.labels)
            ax.set_yticks(range(len(strata.labels)), strata.labels)
            ax.set(xlabel=f"{r.name}: correct count", ylabel=f"{self.base.name}: correct count ({strata.title})")
            fig.colorbar(im, ax=ax)
            png = _png(self.out, f"transitions_{re.sub(r'[^A-Za-z0-9_.-]', '_', r.name)}.png", fig)
            md += [title, "", f"![Figure 9: transitions]({png})", "",
                   _table([f"{self.base.name} \\ {r.name}"] + strata.labels,
                          [[label] + row for label, row in zip(strata.labels, matrix)]), ""]
        return md

    def section_entropy(self) -> list[str]:
        return self.stratified_section("fig10", "Figure 10: answer entropy (nats)", "entropy_by_bin.png",
                                       "answer_entropy_by_correctness", "mean entropy (nats)",
                                       overall="answer_entropy_nats")

    def stratified_section(self, figure: str, title: str, png: str, field: str, ylabel: str,
                           overall: str | None = None) -> list[str]:
        """A Figure 10/13/14 section: ``field`` (a {correct, wrong} dict) per base bin, one panel per correctness
        (first, with ``overall``, one of all responses), and a table row per run and panel."""
        strata = self.strata(figure)
        pooled = {r.name: strata.pooled(r) for r in self.runs}
        values = {side: {name: [p[field][side] for p in per_bin] for name, per_bin in pooled.items()}
                  for side in SIDES}
        if overall:
            values = {"all": {name: [p[overall] for p in per_bin] for name, per_bin in pooled.items()}, **values}
        fig = _bar_panels({f"{side} responses": series for side, series in values.items()}, strata.labels,
                          self.bin_axis(strata), ylabel)
        png = _png(self.out, png, fig)
        rows = [[name, side] + values[side][name] for name in pooled for side in values]
        return [f"## {title} per bin of {self.base.name}'s correct count, by correctness", "",
                f"![{title}]({png})", "", _table(["run", "responses"] + self.bin_header(strata), rows), ""]

    def section_keywords(self) -> list[str]:
        md = self.stratified_section("a6", "Figure 14: reflection keywords per response", "keywords_by_bin.png",
                                     "reflection_per_response", "keyword occurrences per response")
        pooled = {r.name: r.pooled() for r in self.runs}
        header = ["keyword"] + [f"{name} {what} {side}" for name in pooled
                                for what in ("per response", "share") for side in SIDES]
        rows = [[kw] + [p[field][kw][side] for p in pooled.values()
                        for field in ("keywords_per_response", "keyword_presence") for side in SIDES]
                for kw in self.keywords]
        return md + ["Each keyword over all problems: occurrences per response, and the share of responses that "
                     "contain it (case-insensitive, "
                     f"{'whole words' if self.keyword_match == 'word' else 'substrings'}: keyword_match "
                     f"{self.keyword_match}).", "", _table(header, rows), ""]

    def notes(self, hardest: int | None) -> list[str]:
        lines = [f"Base model: **{self.base.name}**. Numbers are computed from each run's `summary.json` "
                 "(its per-problem block), joined on the problem id."]
        if hardest:
            lines.append(f"Restricted to the {hardest} problems {self.base.name} solves least often "
                         "(ties broken by problem id).")
        named = list(FIGURE_BINNINGS.values()) if self.bins == PER_FIGURE else [self.bins]
        lines.append("Bins: each figure's appendix binning (`--bins figures`)." if self.bins == PER_FIGURE else
                     f"Bins: `{self.bins}` for every figure" + (" (the paper's main text; `--bins figures` draws "
                     "each in its appendix binning)." if self.bins == DEFAULT_BINS else "."))
        if self.base.n != PAPER_N and any(b in NAMED_BINNINGS for b in named):
            lines.append(f"The paper's bins are for n = {PAPER_N}; here n = {self.base.n}, so each upper edge e "
                         f"becomes ceil(e * {self.base.n} / {PAPER_N}) and bins left empty are dropped.")
        for r in self.runs[1:]:
            missing = len(set(self.base.problems) - set(r.problems))
            if missing:
                lines.append(f"{r.name} lacks {missing} of the base's problems; its binned numbers use the ones it has.")
        return [line for text in lines for line in (text, "")]


def build_report(run_dirs: list[str], out_dir: str, bins: str | None = None, hardest: int | None = None,
                 paper_model: str | None = None, paper_split: str = "math500") -> Path:
    """Write ``report.md`` and its PNGs to ``out_dir``; returns the Markdown path.

    ``bins``: a binning name or explicit edges for every binned figure (default ``paper-main``, the main text's),
    or ``figures`` for each figure's appendix binning.
    ``hardest``: restrict to the base's K least-solved problems. ``paper_model``: add the paper's Table 3 rows.
    """
    import matplotlib

    matplotlib.use("Agg")
    if paper_model and (paper_model, paper_split) not in paper.TABLE3:
        raise UserError(f"--paper {paper_model} --paper-split {paper_split}: the paper's Table 3 has "
                        f"{', '.join(paper.MODELS)} on {', '.join(paper.SPLITS)}")
    runs = load_runs(run_dirs)
    if hardest is not None:
        keep = hardest_problems(runs[0], hardest)
        runs = [Run(r.name, r.summary, {i: r.problems[i] for i in keep if i in r.problems}) for r in runs]
        for r in runs[1:]:
            if not r.problems:
                raise UserError(f"--hardest {hardest}: {r.name} has none of the base's {hardest} hardest problems")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = Report(runs, out, bins)
    for figure in FIGURE_BINNINGS:
        report.strata(figure)  # a bad --bins fails before any file is written
    md = [f"# Accuracy and capability: {', '.join(r.name for r in runs)}", "", *report.notes(hardest)]
    md += report.section_accuracy()
    if paper_model:
        md += report.section_paper(paper_model, paper_split)
    md += report.section_pass_at_k()
    md += report.section_success()
    md += report.section_transitions()
    md += report.section_entropy()
    md += report.stratified_section("a6", f"Figure 13: response length ({report.unit})", "length_by_bin.png",
                                    "mean_length", f"mean length ({report.unit})")
    md += report.section_keywords()
    path = out / "report.md"
    with atomic_open(path) as f:
        f.write("\n".join(md))
    logger.info("report written to %s", path)
    return path


def _cell(run_dir: Path) -> dict | None:
    """accuracy, maj@n, pass@n and n of a merged evaluation run, or None when it has not finished."""
    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    summary = load_summary(run_dir)
    n = summary["run"]["n"] if "run" in summary else max(int(k.split("n=")[1]) for k in summary if k.startswith("maj@"))
    return {"n": n, "accuracy": summary["accuracy"], "maj": summary.get(f"maj@n:n={n}"),
            "pass": summary.get(f"pass@k:k={n}&n={n}")}


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def paper_tables(study_path: str, root: str, out_dir: str, model: str | None = None) -> Path:
    """``report --paper --study``: Tables 3 and 4 with each cell's run (from the study's table3 / table4 tags, read
    from ``root``) beside the paper's number; a run not finished yet shows as such. Writes ``paper_tables.md``."""
    from .study import load_study

    study = load_study(study_path, root)
    models = [model] if model else list(paper.MODELS)
    cells = {}
    for run in study.runs.values():
        if run.kind == "eval" and (run.table3 or run.table4):
            cells[run.key] = (run, _cell(Path(run.outputs[0])))
    md = [f"# The paper's Tables 3 and 4 beside this study's runs ({study_path}, root {root})", "",
          f"Yours: each cell's run from the study; paper: Kim et al. 2025 (v2), n = {PAPER_N}. A run with another n "
          "shows maj@n and pass@n, not comparable with @256. '-': not run yet (or not in the study).", ""]
    md += ["## Table 3: base vs RL (accuracy, maj@n, pass@n)", ""]
    rows = []
    for m in models:
        for split in ("math-train", "math500"):
            for row, ref in paper.TABLE3[(m, split)].items():
                mine = [(r, c) for r, c in cells.values() if r.table3 and (r.table3["model"], r.table3["split"],
                                                                            r.table3["row"]) == (m, split, row)]
                run, cell = mine[0] if mine else (None, None)
                rows.append([paper.MODELS[m], paper.SPLITS[split], row, run.key if run else "-",
                             cell["n"] if cell else "-",
                             *(f"{_pct(cell[k]) if cell else '-'} / {v:.1f}%" for k, v in zip(
                                 ("accuracy", "maj", "pass"), ref))])
    md += [_table(["model", "split", "row", "run", "n", "accuracy (yours / paper)", "maj@n / maj@256",
                   "pass@n / pass@256"], rows), ""]
    md += ["## Table 4: self-distillation (accuracy, train / test)", ""]
    rows = []
    for m in models:
        for (student, teacher), ref in paper.TABLE4[m].items():
            found = {}
            for r, c in cells.values():
                t = r.table4
                if t and (t["model"], t["student"], t["teacher"]) == (m, student, teacher):
                    found[t["split"]] = (r, c)
            out = []
            for split, value in zip(("train", "test"), ref):
                run, cell = found.get(split, (None, None))
                out += [run.key if run else "-", f"{_pct(cell['accuracy']) if cell else '-'} / {value:.1f}%"]
            rows.append([paper.MODELS[m], student, teacher, *out])
    md += [_table(["model", "student", "teacher", "train run", "train (yours / paper)", "test run",
                   "test (yours / paper)"], rows), ""]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "paper_tables.md"
    with atomic_open(path) as f:
        f.write("\n".join(md))
    logger.info("paper tables written to %s", path)
    return path
