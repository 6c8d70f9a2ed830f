"""`rlvsdistill report` on two synthetic 256-sample runs (a base and an "RL" run, fixed seed) written through the
real `summarize`: the paper's Figure 8/9/10/13/14 panels are valid PNGs linked from report.md, and every table
number matches a value computed here, independently, from the raw synthetic samples."""

import json
import math
import random
import re
from collections import Counter

import pytest
from PIL import Image

from rlvsdistill.cli import main
from rlvsdistill.io import write_json
from rlvsdistill.metrics import REFLECTION_KEYWORDS, Sample, summarize

N = 256
PROBLEMS = 48
# Words that look like Table 5 keywords but are not whole-word matches of any.
DISTRACTORS = ["look", "token", "Okay", "verified", "waiting", "hmmm", "double", "check", "actual", "sure"]
FILLER = ["so", "the", "sum", "is", "x", "then", "we", "get"] + DISTRACTORS
MAIN = [(0, 0), (1, 4), (5, 16), (17, 64), (65, 128), (129, 256)]
FIG8 = [(0, 0), (1, 4), (5, 16), (17, 32), (33, 64), (65, 128), (129, 192), (193, 256)]
FIG10 = [(0, 0), (1, 8), (9, 64), (65, 128), (129, 192), (193, 256)]
A6 = [(0, 64), (65, 128), (129, 192), (193, 256)]


def synthetic_runs(seed: int = 0) -> dict[str, dict[str, list[dict]]]:
    """{run: {problem id: [sample dicts]}} for a base and an RL run. Each sample knows its own keyword count."""
    rng = random.Random(seed)
    levels = [0.0, 0.0, 0.004, 0.01, 0.04, 0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.97]
    runs = {"base": {}, "rl": {}}
    for i in range(PROBLEMS):
        p_base = levels[i % len(levels)]
        p_rl = 0.0 if p_base < 0.02 and i % 2 else min(1.0, p_base * 1.3 + 0.1)  # RL loses some hard problems
        for run, p in (("base", p_base), ("rl", p_rl)):
            samples = []
            for _ in range(N):
                correct = rng.random() < p
                keywords = rng.choices(REFLECTION_KEYWORDS, k=rng.randint(0, 2 if correct else 4))
                words = rng.choices(FILLER, k=rng.randint(5, 15 if correct else 40))
                for kw in keywords:  # inserted whole, in a random case, between filler words
                    words.insert(rng.randint(0, len(words)), rng.choice([kw, kw.upper(), kw.capitalize()]))
                key = "gold" if correct else rng.choice(["w1", "w2", "w3", None])
                samples.append({"correct": correct, "key": key, "text": " ".join(words), "tokens": len(words),
                                "chars": len(" ".join(words)),
                                "keywords": len(keywords), "inserted": Counter(keywords)})
            runs[run][f"p{i:03d}"] = samples
    return runs


def write_run(run_dir, problems: dict[str, list[dict]], length_unit: str = "chars") -> None:
    samples = [Sample(pid, s["correct"], "correct" if s["correct"] else "wrong" if s["key"] else "no_answer",
                      s["key"], "box" if s["key"] else None, s["text"], s["tokens"])
               for pid, group in problems.items() for s in group]
    summary = summarize(samples, length_unit=length_unit)
    summary["run"] = {"model": f"synthetic-{run_dir.name}"}
    write_json(run_dir / "summary.json", summary)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    raw = synthetic_runs()
    root = tmp_path_factory.mktemp("runs")
    for name, problems in raw.items():
        write_run(root / name, problems)
    return raw, root / "base", root / "rl"


# Independent computations from the raw samples.
def correct_count(group):
    return sum(s["correct"] for s in group)


def majority(group):
    votes = Counter()
    first = {}
    for i, s in enumerate(group):
        if s["key"] is not None:
            votes[s["key"]] += 1
            first.setdefault(s["key"], i)
    return bool(votes) and min(votes, key=lambda k: (-votes[k], first[k])) == "gold"


def entropy(group):
    """Entropy of the final answers of a problem's responses (None without any)."""
    counts = Counter(s["key"] or "none" for s in group).values()
    return -sum(c / len(group) * math.log(c / len(group)) for c in counts) if group else None


def mean_entropy(problems, ids, side=None):
    """Mean over the problems of the answer entropy of all their responses, or of their correct / wrong ones (over
    the problems that have any)."""
    values = [entropy([s for s in problems[i] if side is None or s["correct"] == (side == "correct")]) for i in ids]
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def bin_members(base, bins):
    return [[pid for pid, g in base.items() if lo <= correct_count(g) <= hi] for lo, hi in bins]


def per_response(samples, value):
    return sum(value(s) for s in samples) / len(samples) if samples else None


def table_rows(md: str, heading: str) -> dict[str, list[str]]:
    """The first table after a heading that starts with ``heading``: {first cell: other cells}."""
    section = md.split(f"\n## {heading}", 1)[1].split("\n## ", 1)[0] if heading else md
    lines = [line for line in section.splitlines() if line.startswith("| ")][2:]
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines)}


def close(cell: str, expected) -> bool:
    if expected is None:
        return cell == "-"
    return abs(float(cell.rstrip("%")) - expected) <= (0.05 if cell.endswith("%") else 0.0005) + 1e-9  # rounding


def assert_row(cells, expected):
    assert len(cells) == len(expected) and all(close(c, e) for c, e in zip(cells, expected)), (cells, expected)


def test_report_draws_the_papers_figures_from_two_256_sample_runs(runs, tmp_path):
    raw, base_dir, rl_dir = runs
    base, rl = raw["base"], raw["rl"]
    out = tmp_path / "report"
    assert main(["report", str(base_dir), str(rl_dir), "--out", str(out), "--paper", "qwen2.5-math-1.5b",
                 "--bins", "figures"]) == 0
    md = (out / "report.md").read_text()

    pngs = ["pass_at_k.png", "success_by_bin.png", "transitions_rl.png", "entropy_by_bin.png", "length_by_bin.png",
            "keywords_by_bin.png"]  # pass@k, Figures 8, 9, 10, 13, 14
    for png in pngs:
        with Image.open(out / png) as im:
            assert im.format == "PNG" and im.width > 300
            im.verify()
        assert f"]({png})" in md

    # Accuracy, pass@256, maj@256, and the paper's Table 3 rows beside them.
    accuracy = table_rows(md, "Accuracy")
    compare = table_rows(md, "Compared with the paper")
    for name, problems in raw.items():
        acc = sum(correct_count(g) / N for g in problems.values()) / PROBLEMS
        cap = sum(correct_count(g) > 0 for g in problems.values()) / PROBLEMS
        maj = sum(majority(g) for g in problems.values()) / PROBLEMS
        assert accuracy[name][:6] == [f"synthetic-{name}", str(PROBLEMS), str(N), *accuracy[name][3:6]]
        assert_row(accuracy[name][3:6], [acc, cap, maj])
        assert_row(compare[name], [N, 100 * acc, 100 * maj, 100 * cap])
    assert compare["paper: Qwen2.5-Math-1.5B base"] == ["256", "60.6%", "72.0%", "97.2%"]
    assert compare["paper: Qwen2.5-Math-1.5B RL"] == ["256", "74.2%", "80.8%", "97.0%"]
    assert "Oat-Zero" in md

    # Figure 8: mean success per base bin (paper-fig8) and the change against the base.
    success = table_rows(md, "Figure 8")
    members = bin_members(base, FIG8)
    expected = {name: [per_response(ids, lambda i: correct_count(problems[i]) / N) for ids in members]
                for name, problems in raw.items()}
    assert_row(success["base"], expected["base"])
    assert_row(success["rl"], expected["rl"])
    assert_row(success["rl - base"], [None if b is None else r - b for r, b in zip(expected["rl"], expected["base"])])

    # Figure 9: transitions between paper-fig8 bins.
    transitions = table_rows(md, "Figure 9")
    bin_of = {pid: next(j for j, (lo, hi) in enumerate(FIG8) if lo <= correct_count(g) <= hi)
              for pid, g in rl.items()}
    for i, ids in enumerate(members):
        row = [0] * len(FIG8)
        for pid in ids:
            row[bin_of[pid]] += 1
        assert transitions[list(transitions)[i]] == [str(v) for v in row]

    # Figure 10: mean answer entropy per paper-fig10 bin of the base, of all responses and by correctness.
    entropy_rows = [[c.strip() for c in line.strip("|").split("|")]
                    for line in md.split("\n## Figure 10", 1)[1].split("\n## ")[0].splitlines()
                    if line.startswith(("| base |", "| rl |"))]
    assert [row[:2] for row in entropy_rows] == [[name, side] for name in raw for side in ("all", "correct", "wrong")]
    for name, side, *cells in entropy_rows:
        assert_row(cells, [mean_entropy(raw[name], ids, None if side == "all" else side)
                           for ids in bin_members(base, FIG10)])
    wrong = [float(c) for row in entropy_rows if row[1] == "wrong" for c in row[2:] if c != "-"]
    assert max(wrong) > 0.5  # the split is not trivial: wrong answers spread over w1, w2, w3 and none

    # Figures 13 and 14: length and keyword occurrences per response per paper-a6 bin, by correctness.
    length_rows = [line for line in md.split("\n## Figure 13", 1)[1].split("\n## ")[0].splitlines()
                   if line.startswith(("| base |", "| rl |"))]
    keyword_rows = [line for line in md.split("\n## Figure 14", 1)[1].split("\n## ")[0].splitlines()
                    if line.startswith(("| base |", "| rl |"))]
    assert "## Figure 13: response length (chars)" in md
    for rows, field in ((length_rows, "chars"), (keyword_rows, "keywords")):
        for line in rows:
            name, side, *cells = [c.strip() for c in line.strip("|").split("|")]
            expected = [per_response([s for i in ids for s in raw[name][i] if s["correct"] == (side == "correct")],
                                     lambda s: s[field]) for ids in bin_members(base, A6)]
            assert_row(cells, expected)
        assert len(rows) == 4

    # Each keyword over all problems: occurrences per response and share of responses, by correctness.
    per_keyword = table_rows(md.split("\n## Figure 14", 1)[1].split("Each keyword", 1)[1], "")
    assert len(per_keyword) == 27
    for kw in REFLECTION_KEYWORDS:
        expected = []
        for name in ("base", "rl"):
            for value in (lambda s: s["inserted"][kw], lambda s: s["inserted"][kw] > 0):
                for side in (True, False):
                    expected.append(per_response([s for g in raw[name].values() for s in g if s["correct"] == side],
                                                 value))
        assert_row(per_keyword[kw], expected)


def test_hardest_restricts_to_the_problems_the_base_solves_least(runs, tmp_path):
    raw, base_dir, rl_dir = runs
    out = tmp_path / "hard"
    assert main(["report", str(base_dir), str(rl_dir), "--out", str(out), "--hardest", "5"]) == 0
    md = (out / "report.md").read_text()
    # The base solves p000, p001, p012, ... (share 0) never; ties go by problem id.
    order = sorted(raw["base"], key=lambda i: (correct_count(raw["base"][i]), i))
    hardest = order[:5]
    assert correct_count(raw["base"][order[4]]) == correct_count(raw["base"][order[5]])  # a tie is cut
    accuracy = table_rows(md, "Accuracy")
    for name in ("base", "rl"):
        assert accuracy[name][1] == "5"
        assert_row(accuracy[name][3:4], [sum(correct_count(raw[name][i]) / N for i in hardest) / 5])
    assert "Restricted to the 5 problems base solves least often" in md
    assert main(["report", str(base_dir), "--out", str(out), "--hardest", "49"]) == 2  # more than it has


def test_bins_option_names_a_binning_for_every_figure(runs, tmp_path):
    raw, base_dir, rl_dir = runs
    out = tmp_path / "a6"
    assert main(["report", str(base_dir), str(rl_dir), "--out", str(out), "--bins", "paper-a6"]) == 0
    md = (out / "report.md").read_text()
    for heading in ("Figure 8", "Figure 10", "Figure 13"):
        header = md.split(f"\n## {heading}", 1)[1].split("\n| ", 1)[1].split("\n")[0]
        assert re.findall(r"(\d+-\d+|\d+) \(\d+\)", header) == ["0-64", "65-128", "129-192", "193-256"]
    assert main(["report", str(base_dir), "--out", str(tmp_path / "x"), "--bins", "0,1-200"]) == 2  # not 0..256


def test_paper_binnings_are_scaled_for_small_n_and_the_report_says_so(tmp_path, capsys):
    rng = random.Random(1)
    for name in ("b", "r"):
        samples = [Sample(f"q{i}", c, "correct" if c else "wrong", "1" if c else "2", "box", "wait " * c)
                   for i in range(20) for c in [rng.random() < i / 20 for _ in range(8)]]
        write_json(tmp_path / name / "summary.json", summarize(samples))
    assert main(["report", str(tmp_path / "b"), str(tmp_path / "r"), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "report.md").read_text()
    assert "ceil(e * 8 / 256)" in md
    header = md.split("\n## Figure 8", 1)[1].split("\n| ", 1)[1].split("\n")[0]
    assert re.findall(r"(\d+-\d+|\d+) \(\d+\)", header) == ["0", "1", "2", "3-4", "5-8"]  # paper-main at n = 8


def test_old_summary_without_per_problem_blocks_is_refused(tmp_path, capsys):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "summary.json").write_text(json.dumps({"problems": 1, "accuracy": 0.5}))
    assert main(["report", str(tmp_path / "old"), "--out", str(tmp_path / "out")]) == 2
    assert "no per_problem block" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    # One written before the entropy split: its blocks lack the key the report needs.
    blocks = {"p": {"n": 1, "correct": 1, "majority_correct": True, "answer_entropy_nats": 0.0}}
    (tmp_path / "old" / "summary.json").write_text(json.dumps({"per_problem": blocks, "keywords": []}))
    assert main(["report", str(tmp_path / "old"), "--out", str(tmp_path / "out")]) == 2
    assert "no 'answer_entropy_by_correctness' in its per_problem blocks" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_paper_rows_name_the_runs_of_another_split(runs, tmp_path):
    """A MATH-train run printed beside MATH-500's Table 3 rows is named as not comparable (and vice versa)."""
    import shutil

    _, base_dir, rl_dir = runs
    train_dir = tmp_path / "rl-train"
    shutil.copytree(rl_dir, train_dir)
    summary = json.loads((train_dir / "summary.json").read_text())
    summary["run"]["dataset"] = "math_train"
    (train_dir / "summary.json").write_text(json.dumps(summary))
    for split, flagged in (("math500", "rl-train"), ("math-train", None)):
        out = tmp_path / f"report-{split}"
        assert main(["report", str(base_dir), str(train_dir), "--out", str(out), "--paper", "qwen2.5-3b",
                     "--paper-split", split]) == 0
        note = [line for line in (out / "report.md").read_text().splitlines() if line.startswith("Not evaluated on")]
        assert note == ([f"Not evaluated on MATH-500 (math500), so not comparable with these rows: {flagged} (pick "
                         "the split with --paper-split)."] if flagged else [])


def bin_header(md: str, heading: str) -> list[tuple[str, int]]:
    """(label, problems) of each bin in the first table after a heading."""
    header = md.split(f"\n## {heading}", 1)[1].split("\n| ", 1)[1].split("\n")[0]
    return [(label, int(count)) for label, count in re.findall(r"(\d+-\d+|\d+) \((\d+)\)", header)]


def test_every_figure_bins_by_the_main_texts_binning_by_default(runs, tmp_path):
    """Without --bins the paper's main-text bins are drawn in Figures 8-14; --bins figures gives the appendix's."""
    raw, base_dir, rl_dir = runs
    out = tmp_path / "default"
    assert main(["report", str(base_dir), str(rl_dir), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    expected = [(f"{lo}" if lo == hi else f"{lo}-{hi}", len(ids)) for (lo, hi), ids in
                zip(MAIN, bin_members(raw["base"], MAIN))]
    for heading in ("Figure 8", "Figure 10", "Figure 13", "Figure 14"):
        assert bin_header(md, heading) == expected, heading
    assert list(table_rows(md, "Figure 9")) == [label for label, _ in expected]
    assert_row(table_rows(md, "Figure 8")["rl"], [per_response(ids, lambda i: correct_count(raw["rl"][i]) / N)
                                                 for ids in bin_members(raw["base"], MAIN)])
    assert "Bins: `paper-main` for every figure (the paper's main text" in md

    figures = tmp_path / "figures"
    assert main(["report", str(base_dir), str(rl_dir), "--out", str(figures), "--bins", "figures"]) == 0
    md = (figures / "report.md").read_text()
    for heading, bins in (("Figure 8", FIG8), ("Figure 10", FIG10), ("Figure 13", A6)):
        assert [label for label, _ in bin_header(md, heading)] == [f"{lo}" if lo == hi else f"{lo}-{hi}"
                                                                   for lo, hi in bins]


@pytest.mark.parametrize("key,value", [("keyword_match", "substring"), ("length_unit", "tokens")])
def test_runs_measured_differently_are_refused(runs, tmp_path, capsys, key, value):
    import shutil

    _, base_dir, rl_dir = runs
    other = tmp_path / "rl-other"
    shutil.copytree(rl_dir, other)
    summary = json.loads((other / "summary.json").read_text())
    summary[key] = value
    (other / "summary.json").write_text(json.dumps(summary))
    assert main(["report", str(base_dir), str(other), "--out", str(tmp_path / "out")]) == 2
    assert f"rl-other has {key}: {value}, base {key}: " in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_lengths_in_tokens_when_the_runs_were_merged_so(tmp_path):
    raw = synthetic_runs(seed=2)
    for name, problems in raw.items():
        write_run(tmp_path / name, problems, length_unit="tokens")
    out = tmp_path / "out"
    assert main(["report", str(tmp_path / "base"), str(tmp_path / "rl"), "--out", str(out), "--bins", "paper-a6"]) == 0
    md = (out / "report.md").read_text()
    assert "## Figure 13: response length (tokens)" in md
    section = md.split("\n## Figure 13", 1)[1].split("\n## ")[0]
    [row] = [line for line in section.splitlines() if line.startswith("| base | correct |")]
    expected = [per_response([s for i in ids for s in raw["base"][i] if s["correct"]], lambda s: s["tokens"])
                for ids in bin_members(raw["base"], A6)]
    assert_row([c.strip() for c in row.strip("|").split("|")][2:], expected)
