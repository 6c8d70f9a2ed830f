"""Accuracy and capability measures from n graded samples per problem: small pure functions, then ``summarize``.

Input is one record per sample (problem id, verdict, answer key, response, optional level/subject/tokens);
``summarize`` groups them by problem and returns a JSON-ready dict with accuracy, pass@k, maj@n, answer entropy,
difficulty bins, lengths, reflection keywords, per-level / per-subject breakdowns, and a ``ProblemStats.block``
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
# counts occurrences per response in lower case; ``keyword_counts`` matches them case-insensitively, as whole
# words or phrases by default (so "ok" does not match "look" or "token"). Pass ``keywords=`` to count your own.
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


def answer_entropy_by_correctness(keys: Sequence[str | None], correct: Sequence[bool]) -> tuple[float | None, ...]:
    """(correct, wrong): the entropy (nats) of the final answers among one problem's correct responses, and among
    its wrong ones (None for a side without responses). Within a side, answers group by their canonical key, as
    "identical final answer" reads (A.4): the correct side is 0 unless equal answers are written in forms that
    the key tells apart (1/2 and 0.5)."""
    def side(ok: bool) -> float | None:
        own = [key for key, c in zip(keys, correct) if c == ok]
        return answer_entropy(own, [False] * len(own)) if own else None

    return side(True), side(False)


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


@functools.lru_cache(maxsize=64)
def _matchers(keywords: tuple[str, ...]) -> list[tuple[str, str, Callable]]:
    """(keyword, probe, findall) per keyword: the probe, its longest word, is in every match, and a substring test
    for it is much cheaper than the regex (it skips most keywords of most responses)."""
    return [(kw, max(kw.lower().replace("'", " ").split(), key=len), _keyword_pattern(kw).findall)
            for kw in keywords]


# How a keyword is matched in a response (the paper does not say): as a whole word or phrase (the default: a
# phrase is counted, not its letters inside other words, e.g. "ok" in "look" or "token"), or as a plain lower-case
# substring (``text.lower().count(keyword.lower())``: the simplest reading of "counted in lower case").
KEYWORD_MATCHES = ("word", "substring")


def keyword_counts(text: str, keywords: Sequence[str] = REFLECTION_KEYWORDS, match: str = "word") -> dict[str, int]:
    """Occurrences of each keyword in one response, case-insensitive, matched as ``KEYWORD_MATCHES`` says: whole
    words or phrases (so "ok" does not match "look"), or substrings. A response contains a keyword ("presence")
    when its count is above 0."""
    lowered = text.lower()
    if match == "substring":
        return {kw: lowered.count(kw.lower()) for kw in keywords}
    if match != "word":
        raise ValueError(f"keyword_match: {match!r} is not one of {', '.join(KEYWORD_MATCHES)}")
    return {kw: len(findall(lowered)) if probe in lowered else 0 for kw, probe, findall in _matchers(tuple(keywords))}


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


@dataclass(frozen=True, slots=True)
class ProblemStats:
    """One problem's aggregates over its n samples: all that ``summarize_stats`` needs, O(keywords) in size.

    ``lengths`` maps a length unit ("chars", "tokens" when every sample has a token count, or "custom") to the
    sums of the lengths of the (correct, wrong) samples; ``keyword_occurrences``/``keyword_responses`` sum
    ``keyword_counts`` (and its presence) over the correct and the wrong samples.
    """

    problem_id: str
    n: int
    correct: int
    correct_box: int
    majority_correct: bool
    entropy: float
    entropy_by_correctness: tuple[float | None, float | None]  # (correct, wrong)
    statuses: Counter
    sources: Counter  # answer source ("none" without one) -> samples
    correct_sources: Counter  # answer source -> correct samples
    lengths: dict[str, tuple[float, float]]
    # Aligned with the keywords: (correct, wrong) tuples of total occurrences and of responses containing it.
    keyword_occurrences: tuple[tuple[int, ...], tuple[int, ...]]
    keyword_responses: tuple[tuple[int, ...], tuple[int, ...]]
    keyword_match: str = "word"  # how the keywords were matched (``KEYWORD_MATCHES``)
    level: str | None = None
    subject: str | None = None

    def block(self, unit: str) -> dict:
        """The problem's block in ``summary.json``'s ``per_problem``; the report joins these blocks across runs on
        the problem id to stratify by the base model's bins (``pool_problem_blocks`` folds them).

        Keys: ``n``, ``correct`` (count), ``majority_correct``, ``answer_entropy_nats`` and
        ``answer_entropy_by_correctness`` {correct, wrong} (among the correct / the wrong responses), ``length_sum``
        {correct, wrong} (in the summary's ``length_unit``; the sample counts are ``correct`` and n - correct), and
        ``keyword_occurrences`` / ``keyword_responses`` {correct, wrong}: lists aligned with ``keywords`` of the
        total occurrences and of the number of responses that contain each keyword.
        """
        return {
            "n": self.n, "correct": self.correct, "majority_correct": self.majority_correct,
            "answer_entropy_nats": self.entropy,
            "answer_entropy_by_correctness": dict(zip(("correct", "wrong"), self.entropy_by_correctness)),
            "length_sum": dict(zip(("correct", "wrong"), self.lengths[unit])),
            "keyword_occurrences": dict(zip(("correct", "wrong"), map(list, self.keyword_occurrences))),
            "keyword_responses": dict(zip(("correct", "wrong"), map(list, self.keyword_responses))),
        }


def problem_stats(
    samples: Sequence[Sample],
    keywords: Sequence[str] = REFLECTION_KEYWORDS,
    length_of: Callable[[Sample], float] | None = None,
    keyword_match: str = "word",
) -> ProblemStats:
    """The aggregates of one problem's samples (all with the same problem id), for ``summarize_stats``;
    ``keyword_match`` is one of ``KEYWORD_MATCHES``."""
    if not samples:
        raise ValueError("a problem needs at least one sample")
    keys, correct = [s.key for s in samples], [s.correct for s in samples]
    if length_of is not None:
        units = {"custom": length_of}
    else:
        units = {"chars": lambda s: len(s.response)}
        if all(s.num_tokens is not None for s in samples):
            units["tokens"] = lambda s: s.num_tokens
    lengths = {
        unit: (sum(f(s) for s in samples if s.correct), sum(f(s) for s in samples if not s.correct))
        for unit, f in units.items()
    }
    occurrences = {side: [0] * len(keywords) for side in (True, False)}
    responses = {side: [0] * len(keywords) for side in (True, False)}
    for s in samples:
        for i, count in enumerate(keyword_counts(s.response, keywords, keyword_match).values()):
            occurrences[s.correct][i] += count
            responses[s.correct][i] += count > 0
    first = samples[0]
    return ProblemStats(
        problem_id=first.problem_id,
        n=len(samples),
        correct=sum(correct),
        correct_box=sum(s.correct and s.source == "box" for s in samples),
        majority_correct=majority_correct(keys, correct),
        entropy=answer_entropy(keys, correct),
        entropy_by_correctness=answer_entropy_by_correctness(keys, correct),
        statuses=Counter(s.status for s in samples),
        sources=Counter(s.source or "none" for s in samples),
        correct_sources=Counter(s.source for s in samples if s.correct),
        lengths=lengths,
        keyword_occurrences=(tuple(occurrences[True]), tuple(occurrences[False])),
        keyword_responses=(tuple(responses[True]), tuple(responses[False])),
        keyword_match=keyword_match,
        level=first.level,
        subject=first.subject,
    )


def _mean(xs: Iterable[float]) -> float | None:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


def pool_problem_blocks(stats: Iterable[dict], keywords: Sequence[str]) -> dict:
    """Fold the ``ProblemStats.block``s of a set of problems into their means: ``problems``, ``accuracy`` (mean c/n),
    ``maj`` (share of problems whose majority answer is correct), ``answer_entropy_nats`` (mean over problems;
    ``answer_entropy_by_correctness`` {correct, wrong}: over the problems with responses on that side),
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
        "answer_entropy_by_correctness": {side: _mean(p["answer_entropy_by_correctness"][side] for p in stats
                                                      if p["answer_entropy_by_correctness"][side] is not None)
                                          for side in responses},
        "mean_length": {side: per_response(side, sum(p["length_sum"][side] for p in stats)) for side in responses},
        "reflection_per_response": {
            side: per_response(side, sum(sum(p["keyword_occurrences"][side]) for p in stats)) for side in responses},
        "keywords_per_response": {kw: by_side("keyword_occurrences", i) for i, kw in enumerate(keywords)},
        "keyword_presence": {kw: by_side("keyword_responses", i) for i, kw in enumerate(keywords)},
    }


def _ratio(total: float, count: int) -> float | None:
    return total / count if count else None


def _capability_block(stats: Sequence[ProblemStats], ks: Sequence[int]) -> dict:
    """accuracy and pass@k over problems (each with its own n)."""
    out: dict = {"problems": len(stats)}
    if not stats:
        return out
    ns = {p.n for p in stats}
    n = min(ns)
    out["samples_per_problem"] = n if len(ns) == 1 else {"min": n, "max": max(ns)}
    out["accuracy"] = _mean(p.correct / p.n for p in stats)
    for k in ks:
        if k <= n:
            out[f"pass@k:k={k}&n={n}"] = _mean(pass_at_k(p.n, p.correct, k) for p in stats)
    return out


# The unit of response lengths (the paper does not say): characters (the default: what the released code counts,
# and the same for every model whatever its tokenizer), or the tokens the model generated (``num_tokens``).
LENGTH_UNITS = ("chars", "tokens")


def summarize(
    samples: Iterable[Sample],
    ks: Sequence[int] | None = None,
    bins: Sequence[Bin] | None = None,
    keywords: Sequence[str] = REFLECTION_KEYWORDS,
    length_of: Callable[[Sample], int] | None = None,
    keyword_match: str = "word",
    length_unit: str = "chars",
) -> dict:
    """All metrics for a set of graded samples (see the module docstring); JSON-ready.

    Groups the samples by problem (in order of first appearance) and folds their ``problem_stats`` with
    ``summarize_stats``. ``ks`` defaults to 1, 2, 4, ... n; pass@k with k > n raises. Lengths are in
    ``length_unit`` (``LENGTH_UNITS``), or ``length_of``'s when given.
    """
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        groups[s.problem_id].append(s)
    stats = [problem_stats(g, keywords, length_of, keyword_match) for g in groups.values()]
    return summarize_stats(stats, ks, bins, keywords, length_unit)


def summarize_stats(
    stats: Sequence[ProblemStats],
    ks: Sequence[int] | None = None,
    bins: Sequence[Bin] | None = None,
    keywords: Sequence[str] = REFLECTION_KEYWORDS,
    length_unit: str = "chars",
) -> dict:
    """``summarize`` from per-problem aggregates (one ``problem_stats`` per problem, in problem order).

    Memory is O(problems x keywords), whatever the number of samples: ``evaluate.merge`` streams the samples
    problem by problem and keeps only these.
    """
    if not stats:
        raise ValueError("no samples to summarize")
    n = min(p.n for p in stats)
    ks = list(ks) if ks else default_ks(n)
    too_big = [k for k in ks if k > n]
    if too_big:
        raise ValueError(f"pass@k with k = {too_big} needs at least that many samples per problem; n = {n}")
    bins = resolve_bins(bins, n) if bins else difficulty_bins(n)
    if length_unit not in LENGTH_UNITS:
        raise ValueError(f"length_unit: {length_unit!r} is not one of {', '.join(LENGTH_UNITS)}")
    unit = "custom" if all("custom" in p.lengths for p in stats) else length_unit
    lacking = [p.problem_id for p in stats if unit not in p.lengths]
    if lacking:
        raise ValueError(f"length_unit: {unit} needs every sample's token count (num_tokens); {len(lacking)} "
                         f"problem(s) have samples without one, e.g. {lacking[0]!r}")

    statuses, sources, correct_by_source = Counter(), Counter(), Counter()
    for p in stats:
        statuses.update(p.statuses)
        sources.update(p.sources)
        correct_by_source.update(p.correct_sources)
    n_samples = sum(p.n for p in stats)
    n_correct = sum(p.correct for p in stats)

    summary = _capability_block(stats, ks)
    summary[f"maj@n:n={n}"] = _mean(p.majority_correct for p in stats)
    summary["accuracy_box_only"] = _mean(p.correct_box / p.n for p in stats)
    summary["verdicts"] = {k: statuses.get(k, 0) for k in ("correct", "wrong", "no_answer", "parse_error", "timeout")}
    summary["answer_source"] = dict(sorted(sources.items()))
    summary["correct_by_source"] = dict(sorted(correct_by_source.items()))
    summary["answer_entropy_mean_nats"] = _mean(p.entropy for p in stats)

    bin_rows = []
    for lo, hi in bins:
        members = [p for p in stats if lo <= p.correct <= hi]
        bin_rows.append(
            {
                "bin": bin_label((lo, hi)),
                "problems": len(members),
                "mean_length_correct": _ratio(sum(p.lengths[unit][0] for p in members),
                                              sum(p.correct for p in members)),
                "mean_length_wrong": _ratio(sum(p.lengths[unit][1] for p in members),
                                            sum(p.n - p.correct for p in members)),
            }
        )
    summary["difficulty_bins"] = bin_rows
    summary["length_unit"] = unit
    total_correct = sum(p.lengths[unit][0] for p in stats)
    total_wrong = sum(p.lengths[unit][1] for p in stats)
    summary["length"] = {
        "mean": _ratio(total_correct + total_wrong, n_samples),
        "mean_correct": _ratio(total_correct, n_correct),
        "mean_wrong": _ratio(total_wrong, n_samples - n_correct),
    }
    per_problem = {p.problem_id: p.block(unit) for p in stats}
    pooled = pool_problem_blocks(per_problem.values(), keywords)
    matches = {p.keyword_match for p in stats}
    if len(matches) > 1:
        raise ValueError(f"keyword_match: the problems were counted in different ways ({sorted(matches)})")
    summary["keywords"] = list(keywords)
    summary["keyword_match"] = stats[0].keyword_match
    summary["keywords_per_response"] = pooled["keywords_per_response"]
    summary["keyword_presence"] = pooled["keyword_presence"]
    for field in ("level", "subject"):
        values = sorted({str(getattr(p, field)) for p in stats if getattr(p, field) is not None})
        if values:
            summary[f"by_{field}"] = {
                v: _capability_block([p for p in stats if str(getattr(p, field)) == v], ks) for v in values
            }
    summary["correct_counts"] = dict(sorted((p.problem_id, p.correct) for p in stats))
    summary["per_problem"] = per_problem
    return summary
