"""Accuracy and capability measures from n graded samples per problem: small pure functions, then ``summarize``.

Input is one record per sample (problem id, verdict, answer key, response, optional level/subject/tokens);
``summarize`` groups them by problem and returns a JSON-ready dict with accuracy, pass@k, maj@n, answer entropy,
difficulty bins, lengths, reflection keywords, per-level / per-subject breakdowns, and a ``problem_block``
per problem, from which ``pool_problem_blocks`` recomputes the means over any subset (a bin of another run).
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

# Table 5 of the paper (arXiv 2505.14216 v2, A.6.2): the 27 reflection-related phrases as stored. The paper
# counts occurrences per response in lower case; ``keyword_counts`` matches them case-insensitively and as whole
# words or phrases (so "ok" does not match "look" or "token"). Pass ``keywords=`` to count your own.
REFLECTION_KEYWORDS: tuple[str, ...] = (
    "actually", "aha", "alternatively", "correction:", "another approach", "different method",
    "checking our work", "double-check", "hmm", "however", "I made a mistake", "I need to reconsider", "I realize",
    "let me recalculate", "let me think", "let's check", "let's reconsider", "looking back", "make sure", "ok",
    "on second thought", "retracing", "to be sure", "to confirm", "verify", "wait", "we could also",
)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimate for one problem with c correct of n samples: 1 - C(n-c, k) / C(n, k).

    Chen et al. 2021 (arXiv 2107.03374), computed as a running product for numerical stability.
    At k = n this is the paper's capability indicator 1[c > 0].
    """
    if not 0 <= c <= n:
        raise ValueError(f"correct count {c} outside 0..{n}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs 1 <= k <= n = {n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def default_ks(n: int) -> list[int]:
    """k = 1, 2, 4, ... up to n, with n itself always included."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def majority_correct(keys: Sequence[str | None], correct: Sequence[bool]) -> bool:
    """maj@n for one problem: is the most frequent final answer correct?

    Equivalent answers are grouped: every correct answer is equal to the gold, so all correct samples form one
    group; wrong answers group by their canonical key. Samples without an answer do not vote. Ties go to the
    group whose first sample came earliest.
    """
    groups: dict[str, list[int]] = {}  # group -> [count, first index]
    for i, (key, ok) in enumerate(zip(keys, correct)):
        if ok:
            group = "\0correct"
        elif key is None:
            continue
        else:
            group = key
        if group not in groups:
            groups[group] = [0, i]
        groups[group][0] += 1
    if not groups:
        return False
    best = min(groups, key=lambda g: (-groups[g][0], groups[g][1]))
    return best == "\0correct"


def answer_entropy(keys: Sequence[str | None], correct: Sequence[bool]) -> float:
    """Entropy (nats) of the final-answer distribution of one problem (paper appendix A.4).

    Answers are grouped as in ``majority_correct``; samples without an answer form one more group.
    """
    counts = Counter("\0correct" if ok else ("\0none" if key is None else key) for key, ok in zip(keys, correct))
    total = sum(counts.values())
    return -sum((c / total) * math.log(c / total) for c in counts.values()) if total else 0.0


Bin = tuple[int, int]  # inclusive correct-count range

PAPER_N = 256  # samples per problem in the paper; its binnings are defined for this n
# The paper's binnings of the base model's correct count out of 256 (arXiv 2505.14216 v2).
NAMED_BINNINGS: dict[str, tuple[Bin, ...]] = {
    "paper-main": ((0, 0), (1, 4), (5, 16), (17, 64), (65, 128), (129, 256)),  # main text
    "paper-fig8": ((0, 0), (1, 4), (5, 16), (17, 32), (33, 64), (65, 128), (129, 192), (193, 256)),  # Figs 8, 9
    "paper-fig10": ((0, 0), (1, 8), (9, 64), (65, 128), (129, 192), (193, 256)),  # Fig 10 (entropy)
    "paper-a6": ((0, 64), (65, 128), (129, 192), (193, 256)),  # A.6, Figs 13, 14 (lengths, keywords)
}


def scale_bins(bins: Sequence[Bin], n: int, of: int = PAPER_N) -> list[Bin]:
    """Bins that cover 0..``of`` scaled to 0..n: each upper edge e becomes ceil(e * n / of); bins left empty are
    dropped. At n = ``of`` the bins are unchanged."""
    if n < 1:
        raise ValueError("n must be >= 1")
    out, lo = [], 0
    for _, hi in validate_bins(bins, of):
        hi = math.ceil(hi * n / of)
        if hi >= lo:
            out.append((lo, hi))
            lo = hi + 1
    return out


def difficulty_bins(n: int) -> list[Bin]:
    """The paper's main-text bins of the correct count c out of n: [0], [1-4], [5-16], [17-64], [65-128],
    [129-256] at n = 256, scaled as ``scale_bins`` does for other n."""
    return scale_bins(NAMED_BINNINGS["paper-main"], n)


def parse_edges(text: str) -> list[Bin]:
    """'0,1-4,5-16,17-64' -> [(0, 0), (1, 4), (5, 16), (17, 64)]; ValueError on bad syntax."""
    bins = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            bins.append((int(lo), int(hi or lo)))
        except ValueError:
            raise ValueError(f"bad bin {part.strip()!r} in {text!r}: use LO-HI or N, comma-separated, or one of "
                             f"{', '.join(NAMED_BINNINGS)}") from None
    return bins


def resolve_bins(spec: str | Sequence[Bin], n: int) -> list[Bin]:
    """Bins for n samples per problem from a binning name (``NAMED_BINNINGS``, scaled when n != 256), explicit
    edges ('0,1-4,5-256') or a list of (lo, hi); explicit bins must cover 0..n exactly."""
    if isinstance(spec, str):
        if spec in NAMED_BINNINGS:
            return scale_bins(NAMED_BINNINGS[spec], n)
        spec = parse_edges(spec)
    return validate_bins(spec, n)


def validate_bins(bins: Sequence[Bin], n: int) -> list[Bin]:
    """Check custom bins cover 0..n without gaps or overlaps; returns them as tuples."""
    bins = [tuple(b) for b in bins]
    expected = 0
    for lo, hi in bins:
        if lo != expected or hi < lo:
            raise ValueError(f"bins must cover 0..{n} in order without gaps: got {bins}")
        expected = hi + 1
    if expected != n + 1:
        raise ValueError(f"bins must end at n = {n}: got {bins}")
    return bins


def bin_label(b: Bin) -> str:
    return str(b[0]) if b[0] == b[1] else f"{b[0]}-{b[1]}"


def bin_index(c: int, bins: Sequence[Bin]) -> int:
    for i, (lo, hi) in enumerate(bins):
        if lo <= c <= hi:
            return i
    raise ValueError(f"correct count {c} falls in no bin of {bins}")


def transition_matrix(
    base_counts: Mapping[str, int], other_counts: Mapping[str, int], bins: Sequence[Bin]
) -> list[list[int]]:
    """Problems moving between difficulty bins: cell [i][j] counts problems in base bin i and other bin j.

    Only problems present in both mappings count.
    """
    matrix = [[0] * len(bins) for _ in bins]
    for pid, c in base_counts.items():
        if pid in other_counts:
            matrix[bin_index(c, bins)][bin_index(other_counts[pid], bins)] += 1
    return matrix


@functools.lru_cache(maxsize=1024)
def _keyword_pattern(keyword: str) -> re.Pattern:
    """The pattern of one keyword, to run on lower-cased text: whole words or phrases (a word character at either
    end of the keyword may not touch another word character), any whitespace run between a phrase's words, and
    ' matching ’ too. The start boundary is a lookbehind placed after the first word, so that the pattern begins
    with a literal, which Python's regex engine searches for quickly."""
    words = [re.escape(w).replace("'", "['’]") for w in keyword.lower().split()]
    if not words:
        raise ValueError("empty keyword")
    start = rf"(?<!\w{words[0]})" if re.match(r"\w", keyword) else ""
    end = r"(?!\w)" if re.search(r"\w$", keyword) else ""
    return re.compile(words[0] + start + "".join(rf"\s+{w}" for w in words[1:]) + end)


def keyword_counts(text: str, keywords: Sequence[str] = REFLECTION_KEYWORDS) -> dict[str, int]:
    """Occurrences of each keyword in one response, case-insensitive, as whole words or phrases (so "ok" does
    not match "look"). A response contains a keyword ("presence") when its count is above 0."""
    lowered = text.lower()
    return {kw: len(_keyword_pattern(kw).findall(lowered)) for kw in keywords}


@dataclass(frozen=True)
class Sample:
    """One graded sample, as ``summarize`` needs it."""

    problem_id: str
    correct: bool
    status: str
    key: str | None = None
    source: str | None = None
    response: str = ""
    num_tokens: int | None = None
    level: str | None = None
    subject: str | None = None


def _mean(xs: Iterable[float]) -> float | None:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


def problem_block(samples: Sequence[Sample], length_of: Callable[[Sample], int],
                  keywords: Sequence[str] = REFLECTION_KEYWORDS) -> dict:
    """The per-problem block of ``summary.json`` from one problem's samples; the report joins these blocks across
    runs on the problem id to stratify by the base model's bins.

    Keys: ``n``, ``correct`` (count), ``majority_correct``, ``answer_entropy_nats``, ``length_sum`` {correct,
    wrong} (in the summary's ``length_unit``; the sample counts are ``correct`` and n - correct), and
    ``keyword_occurrences`` / ``keyword_responses`` {correct, wrong}: lists aligned with ``keywords`` of the total
    occurrences and of the number of responses that contain each keyword.
    """
    keys, correct = [s.key for s in samples], [s.correct for s in samples]
    lengths = {"correct": 0, "wrong": 0}
    occurrences = {"correct": [0] * len(keywords), "wrong": [0] * len(keywords)}
    responses = {"correct": [0] * len(keywords), "wrong": [0] * len(keywords)}
    for s in samples:
        side = "correct" if s.correct else "wrong"
        lengths[side] += length_of(s)
        for i, count in enumerate(keyword_counts(s.response, keywords).values()):
            occurrences[side][i] += count
            responses[side][i] += count > 0
    return {"n": len(samples), "correct": sum(correct), "majority_correct": majority_correct(keys, correct),
            "answer_entropy_nats": answer_entropy(keys, correct), "length_sum": lengths,
            "keyword_occurrences": occurrences, "keyword_responses": responses}


def pool_problem_blocks(stats: Iterable[dict], keywords: Sequence[str]) -> dict:
    """Fold the ``problem_block``s of a set of problems into their means: ``problems``, ``accuracy`` (mean c/n),
    ``maj`` (share of problems whose majority answer is correct), ``answer_entropy_nats`` (mean over problems),
    ``mean_length`` {correct, wrong} (per response), ``reflection_per_response`` {correct, wrong} (all keywords'
    occurrences per response), and per keyword ``keywords_per_response`` (occurrences per response) and
    ``keyword_presence`` (share of responses containing it), each {correct, wrong}. Means over nothing are None."""
    stats = list(stats)
    responses = {"correct": sum(p["correct"] for p in stats)}
    responses["wrong"] = sum(p["n"] for p in stats) - responses["correct"]

    def per_response(side: str, total: float) -> float | None:
        return total / responses[side] if responses[side] else None

    def by_side(field: str, i: int) -> dict:
        return {side: per_response(side, sum(p[field][side][i] for p in stats)) for side in responses}

    return {
        "problems": len(stats),
        "accuracy": _mean(p["correct"] / p["n"] for p in stats),
        "maj": _mean(float(p["majority_correct"]) for p in stats),
        "answer_entropy_nats": _mean(p["answer_entropy_nats"] for p in stats),
        "mean_length": {side: per_response(side, sum(p["length_sum"][side] for p in stats)) for side in responses},
        "reflection_per_response": {
            side: per_response(side, sum(sum(p["keyword_occurrences"][side]) for p in stats)) for side in responses},
        "keywords_per_response": {kw: by_side("keyword_occurrences", i) for i, kw in enumerate(keywords)},
        "keyword_presence": {kw: by_side("keyword_responses", i) for i, kw in enumerate(keywords)},
    }


def _capability_block(groups: Mapping[str, list[Sample]], ks: Sequence[int]) -> dict:
    """accuracy and pass@k over problems (each with its own n)."""
    out: dict = {"problems": len(groups)}
    if not groups:
        return out
    ns = {len(s) for s in groups.values()}
    n = min(ns)
    out["samples_per_problem"] = n if len(ns) == 1 else {"min": n, "max": max(ns)}
    out["accuracy"] = _mean(sum(x.correct for x in s) / len(s) for s in groups.values())
    for k in ks:
        if k <= n:
            out[f"pass@k:k={k}&n={n}"] = _mean(pass_at_k(len(s), sum(x.correct for x in s), k) for s in groups.values())
    return out


def summarize(
    samples: Sequence[Sample],
    ks: Sequence[int] | None = None,
    bins: Sequence[Bin] | None = None,
    keywords: Sequence[str] = REFLECTION_KEYWORDS,
    length_of: Callable[[Sample], int] | None = None,
) -> dict:
    """All metrics for a set of graded samples (see the module docstring); JSON-ready.

    ``ks`` defaults to 1, 2, 4, ... n; pass@k with k > n raises. ``length_of`` defaults to the token count
    when every sample has one, else the character count.
    """
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        groups[s.problem_id].append(s)
    if not groups:
        raise ValueError("no samples to summarize")
    n = min(len(g) for g in groups.values())
    ks = list(ks) if ks else default_ks(n)
    too_big = [k for k in ks if k > n]
    if too_big:
        raise ValueError(f"pass@k with k = {too_big} needs at least that many samples per problem; n = {n}")
    bins = resolve_bins(bins, n) if bins else difficulty_bins(n)
    if length_of is None:
        unit = "tokens" if all(s.num_tokens is not None for s in samples) else "chars"
        length_of = (lambda s: s.num_tokens) if unit == "tokens" else (lambda s: len(s.response))
    else:
        unit = "custom"

    correct_counts = {pid: sum(x.correct for x in g) for pid, g in groups.items()}
    statuses = Counter(s.status for s in samples)
    sources = Counter(s.source or "none" for s in samples)
    correct_by_source = Counter(s.source for s in samples if s.correct)

    summary = _capability_block(groups, ks)
    summary[f"maj@n:n={n}"] = _mean(
        majority_correct([x.key for x in g], [x.correct for x in g]) for g in groups.values()
    )
    summary["accuracy_box_only"] = _mean(sum(x.correct and x.source == "box" for x in g) / len(g) for g in groups.values())
    summary["verdicts"] = {k: statuses.get(k, 0) for k in ("correct", "wrong", "no_answer", "parse_error", "timeout")}
    summary["answer_source"] = dict(sorted(sources.items()))
    summary["correct_by_source"] = dict(sorted(correct_by_source.items()))
    summary["answer_entropy_mean_nats"] = _mean(
        answer_entropy([x.key for x in g], [x.correct for x in g]) for g in groups.values()
    )

    bin_rows = []
    for b in bins:
        members = [pid for pid, c in correct_counts.items() if b[0] <= c <= b[1]]
        in_bin = [s for pid in members for s in groups[pid]]
        bin_rows.append(
            {
                "bin": bin_label(b),
                "problems": len(members),
                "mean_length_correct": _mean(length_of(s) for s in in_bin if s.correct),
                "mean_length_wrong": _mean(length_of(s) for s in in_bin if not s.correct),
            }
        )
    summary["difficulty_bins"] = bin_rows
    summary["length_unit"] = unit
    summary["length"] = {
        "mean": _mean(length_of(s) for s in samples),
        "mean_correct": _mean(length_of(s) for s in samples if s.correct),
        "mean_wrong": _mean(length_of(s) for s in samples if not s.correct),
    }
    per_problem = {pid: problem_block(g, length_of, keywords) for pid, g in groups.items()}
    pooled = pool_problem_blocks(per_problem.values(), keywords)
    summary["keywords"] = list(keywords)
    summary["keywords_per_response"] = pooled["keywords_per_response"]
    summary["keyword_presence"] = pooled["keyword_presence"]
    for field in ("level", "subject"):
        values = sorted({str(getattr(g[0], field)) for g in groups.values() if getattr(g[0], field) is not None})
        if values:
            summary[f"by_{field}"] = {
                v: _capability_block({p: g for p, g in groups.items() if str(getattr(g[0], field)) == v}, ks)
                for v in values
            }
    summary["correct_counts"] = dict(sorted(correct_counts.items()))
    summary["per_problem"] = per_problem
    return summary
