"""Metrics: pass@k against brute force, and hand-made cases for maj@n, entropy, bins, transitions, keywords."""

import itertools
import math
import re
from fractions import Fraction

import pytest

from rlvsdistill.metrics import (
    REFLECTION_KEYWORDS,
    Sample,
    answer_entropy,
    answer_entropy_by_correctness,
    default_ks,
    difficulty_bins,
    keyword_counts,
    majority_correct,
    pool_problem_blocks,
    problem_stats,
    resolve_bins,
    pass_at_k,
    summarize,
    transition_matrix,
    validate_bins,
)


def brute_force_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """Fraction of all k-subsets of n samples (c of them correct) that hold at least one correct sample."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return Fraction(sum(any(samples[i] for i in s) for s in subsets), len(subsets))


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_equals_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(float(brute_force_pass_at_k(n, c, k)), abs=1e-12)


def test_pass_at_k_at_n_is_capability_indicator_and_stable_for_large_n():
    for c in (0, 1, 17, 256):
        assert pass_at_k(256, c, 256) == float(c > 0)
    # One correct of 256: pass@1 is exactly 1/256 and pass@128 exactly 1/2, no overflow or cancellation.
    assert pass_at_k(256, 1, 1) == pytest.approx(1 / 256, rel=1e-12)
    assert pass_at_k(256, 1, 128) == pytest.approx(0.5, rel=1e-12)


@pytest.mark.parametrize("n,c,k", [(4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)])
def test_pass_at_k_rejects_bad_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_default_ks():
    assert default_ks(256) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert default_ks(10) == [1, 2, 4, 8, 10]
    assert default_ks(1) == [1]


MAJ_CASES = [
    # (keys, correct, expected maj@n)
    (["1", "2", "2"], [True, False, False], False),  # wrong answer "2" outvotes the correct one
    (["1", "0.5", "2", "2"], [True, True, False, False], True),  # two correct forms group: tie, correct came first
    (["2", "2", "1", "0.5"], [False, False, True, True], False),  # same tie, wrong group came first
    ([None, None, "3"], [False, False, True], True),  # samples without an answer do not vote
    ([None, None], [False, False], False),  # nobody answered
]


@pytest.mark.parametrize("keys,correct,expected", MAJ_CASES)
def test_majority_correct(keys, correct, expected):
    assert majority_correct(keys, correct) is expected


def test_answer_entropy():
    assert answer_entropy(["1"] * 4, [True] * 4) == 0.0  # one answer: no uncertainty
    # two equal groups: log 2; correct forms "1" and "0.5" are one group
    assert answer_entropy(["1", "0.5", "7", "7"], [True, True, False, False]) == pytest.approx(math.log(2))
    # four different answers, one of them "no answer": log 4
    assert answer_entropy(["1", "2", "3", None], [False] * 4) == pytest.approx(math.log(4))


ENTROPY_SPLIT_CASES = [
    # (keys, correct, (entropy among the correct responses, among the wrong ones))
    (["1", "1", "7", "8"], [True, True, False, False], (0.0, math.log(2))),  # one correct form; two wrong answers
    (["1", "0.5", "7", "7"], [True, True, False, False], (math.log(2), 0.0)),  # two written forms of the answer
    (["7", "8", None, None], [False] * 4, (None, -2 * 0.25 * math.log(0.25) - 0.5 * math.log(0.5))),  # none correct
    (["1", "1"], [True, True], (0.0, None)),  # none wrong
]


@pytest.mark.parametrize("keys,correct,expected", ENTROPY_SPLIT_CASES)
def test_answer_entropy_by_correctness(keys, correct, expected):
    got = answer_entropy_by_correctness(keys, correct)
    assert [g is None for g in got] == [e is None for e in expected]
    assert [g for g in got if g is not None] == pytest.approx([e for e in expected if e is not None])


def test_difficulty_bins_paper_and_rule():
    assert difficulty_bins(256) == [(0, 0), (1, 4), (5, 16), (17, 64), (65, 128), (129, 256)]
    assert difficulty_bins(16) == [(0, 0), (1, 1), (2, 4), (5, 8), (9, 16)]
    assert difficulty_bins(1) == [(0, 0), (1, 1)]
    assert validate_bins([(0, 0), (1, 3), (4, 4)], 4) == [(0, 0), (1, 3), (4, 4)]
    for bad in ([(0, 0), (2, 4)], [(0, 2), (2, 4)], [(0, 0), (1, 3)]):  # gap, overlap, short of n
        with pytest.raises(ValueError):
            validate_bins(bad, 4)


BINNING_CASES = [
    # (spec, n, bins)
    ("paper-main", 256, [(0, 0), (1, 4), (5, 16), (17, 64), (65, 128), (129, 256)]),  # the paper's main text
    ("paper-fig8", 256, [(0, 0), (1, 4), (5, 16), (17, 32), (33, 64), (65, 128), (129, 192), (193, 256)]),
    ("paper-fig10", 256, [(0, 0), (1, 8), (9, 64), (65, 128), (129, 192), (193, 256)]),
    ("paper-a6", 256, [(0, 64), (65, 128), (129, 192), (193, 256)]),  # four bins of 64
    ("paper-fig8", 512, [(0, 0), (1, 8), (9, 32), (33, 64), (65, 128), (129, 256), (257, 384), (385, 512)]),  # x2
    ("paper-fig8", 8, [(0, 0), (1, 1), (2, 2), (3, 4), (5, 6), (7, 8)]),  # edges ceil(e*8/256); empty bins dropped
    ("paper-a6", 4, [(0, 1), (2, 2), (3, 3), (4, 4)]),  # the first bin keeps 0
    ("paper-fig10", 1, [(0, 0), (1, 1)]),
    ("0,1-3,4", 4, [(0, 0), (1, 3), (4, 4)]),  # explicit edges are taken as they are
]


@pytest.mark.parametrize("spec,n,expected", BINNING_CASES)
def test_resolve_bins(spec, n, expected):
    assert resolve_bins(spec, n) == expected


@pytest.mark.parametrize("spec,error", [
    ("0,1-4,5-200", "must end at n = 256"),  # explicit edges must reach n
    ("0,2-256", "without gaps"),
    ("paper-fig9", "bad bin 'paper-fig9'"),  # an unknown name is not read as edges
    ("0,1-x", "one of paper-main, paper-fig8, paper-fig10, paper-a6"),  # the error lists the names
])
def test_resolve_bins_errors(spec, error):
    with pytest.raises(ValueError, match=re.escape(error)):
        resolve_bins(spec, 256)


def test_transition_matrix():
    bins = [(0, 0), (1, 2), (3, 4)]
    base = {"a": 0, "b": 1, "c": 4, "d": 3, "only-base": 2}
    other = {"a": 2, "b": 0, "c": 4, "d": 4, "only-other": 1}
    assert transition_matrix(base, other, bins) == [
        [0, 1, 0],  # a: 0 -> 1-2
        [1, 0, 0],  # b: 1-2 -> 0
        [0, 0, 2],  # c, d stay in 3-4
    ]


TABLE_5 = """actually, aha, alternatively, correction:, another approach, different method, checking our work,
double-check, hmm, however, I made a mistake, I need to reconsider, I realize, let me recalculate, let me think,
let's check, let's reconsider, looking back, make sure, ok, on second thought, retracing, to be sure, to confirm,
verify, wait, we could also"""  # as printed in reference.md


def test_default_keywords_are_table_5():
    assert REFLECTION_KEYWORDS == tuple(k.strip() for k in TABLE_5.replace("\n", " ").split(","))
    assert len(REFLECTION_KEYWORDS) == 27


KEYWORD_CASES = [
    # (text, keyword, occurrences)
    ("Wait, wait. WAIT!", "wait", 3),  # case-insensitive, every occurrence counts
    ("Let me look at the token", "ok", 0),  # "ok" inside "look" and "token" is not the word "ok"
    ("OK, so ok. Okay.", "ok", 2),  # the word "ok" in any case; "Okay" is another word
    ("Hmm... hmmm", "hmm", 1),  # "hmmm" is not "hmm"
    ("We verify it. Verifying again; verified.", "verify", 1),  # inflections are other words
    ("Correction: 2. The correction is 3.", "correction:", 1),  # the colon is part of the keyword
    ("self-correction: x", "correction:", 1),  # a hyphen is a word boundary
    ("let me\n  think. Let me thinking", "let me think", 1),  # any whitespace between a phrase's words
    ("Let’s check. let's check", "let's check", 2),  # typographic and straight apostrophes
    ("Let us check", "let's check", 0),  # a phrase matches only as written
    ("double-check, double-checked, double check", "double-check", 1),  # hyphenated word, whole
    ("Aha! ahah. aha", "aha", 2),
    ("I realize now; i realized", "I realize", 1),  # an upper-case keyword matches lower-case text
    ("Actually_ actually2 actually", "actually", 1),  # underscores and digits are word characters
]


@pytest.mark.parametrize("text,keyword,expected", KEYWORD_CASES)
def test_keyword_counts_whole_words_case_insensitive(text, keyword, expected):
    assert keyword_counts(text, [keyword]) == {keyword: expected}


SUBSTRING_CASES = [
    # (text, keyword, whole-word count, substring count)
    ("Let me look at the token", "ok", 0, 2),  # the letters of "ok" in "look" and "token"
    ("OK, so ok. Okay.", "ok", 2, 3),  # and in "Okay"
    ("Hmm... hmmm", "hmm", 1, 2),
    ("We verify it. Verifying again; verified.", "verify", 1, 2),  # "verified" does not contain "verify"
    ("I realize now; i realized", "I realize", 1, 2),
    ("Let’s check. let's check", "let's check", 2, 1),  # a substring is the keyword as written: no ’
    ("let me\n  think", "let me think", 1, 0),  # nor other whitespace
    ("Wait, wait. WAIT!", "wait", 3, 3),  # where both agree
]


@pytest.mark.parametrize("text,keyword,word,substring", SUBSTRING_CASES)
def test_keyword_counts_as_words_or_substrings(text, keyword, word, substring):
    assert keyword_counts(text, [keyword], match="word") == {keyword: word}
    assert keyword_counts(text, [keyword], match="substring") == {keyword: substring}


def test_keyword_match_is_recorded_and_a_bad_one_names_the_key():
    samples = [Sample("p", True, "correct", "1", "box", "Okay, look: ok.")]
    word, substring = (summarize(samples, keywords=["ok"], keyword_match=m) for m in ("word", "substring"))
    assert (word["keyword_match"], substring["keyword_match"]) == ("word", "substring")
    assert word["per_problem"]["p"]["keyword_occurrences"]["correct"] == [1]
    assert substring["per_problem"]["p"]["keyword_occurrences"]["correct"] == [3]
    with pytest.raises(ValueError, match="keyword_match: 'regex' is not one of word, substring"):
        summarize(samples, keyword_match="regex")


def test_keyword_counts_default_list():
    counts = keyword_counts("Wait, I need to reconsider. Hmm, let me think. Looking back, wait.")
    assert counts.keys() == set(REFLECTION_KEYWORDS)
    assert {k: v for k, v in counts.items() if v} == {
        "wait": 2, "I need to reconsider": 1, "hmm": 1, "let me think": 1, "looking back": 1}


def _samples():
    # p1: 3 of 4 correct; p2: 0 of 4 (one fallback answer, one without answer); level/subject set.
    s = [Sample("p1", True, "correct", "1", "box", "Wait \\boxed{1}", level="1", subject="Algebra") for _ in range(3)]
    s.append(Sample("p1", False, "wrong", "2", "box", "\\boxed{2}", level="1", subject="Algebra"))
    s += [Sample("p2", False, "wrong", "5", "box", "\\boxed{5}", level="3", subject="Geometry") for _ in range(2)]
    s.append(Sample("p2", False, "wrong", "6", "fallback", "it is 6", level="3", subject="Geometry"))
    s.append(Sample("p2", False, "no_answer", None, None, "", level="3", subject="Geometry"))
    return s


def test_summarize_hand_made():
    out = summarize(_samples())
    assert out["problems"] == 2 and out["samples_per_problem"] == 4
    assert out["accuracy"] == pytest.approx((3 / 4 + 0) / 2)
    assert out["pass@k:k=1&n=4"] == pytest.approx(out["accuracy"])
    assert out["pass@k:k=4&n=4"] == 0.5  # capability: p1 solved, p2 not
    assert out["maj@n:n=4"] == 0.5
    assert out["verdicts"] == {"correct": 3, "wrong": 4, "no_answer": 1, "parse_error": 0, "timeout": 0}
    assert out["answer_source"] == {"box": 6, "fallback": 1, "none": 1}
    assert out["correct_counts"] == {"p1": 3, "p2": 0}
    assert [b["problems"] for b in out["difficulty_bins"]] == [1, 0, 0, 1]  # bins 0, 1, 2, 3-4 for n = 4
    assert out["length_unit"] == "chars"
    assert out["keywords_per_response"]["wait"] == {"correct": 1.0, "wrong": 0.0}
    assert out["by_level"]["1"]["accuracy"] == 0.75 and out["by_subject"]["Geometry"]["accuracy"] == 0.0


def test_problem_block_and_pooling():
    kws = ["wait", "ok"]
    samples = [
        Sample("p", True, "correct", "1", "box", "Wait, ok. Wait."),  # 15 chars: wait x2, ok x1
        Sample("p", True, "correct", "1", "box", "look: 1"),  # 7 chars, no keyword ("look" is not "ok")
        Sample("p", False, "wrong", "2", "box", "wait 2"),  # 6 chars
    ]
    stats = problem_stats(samples, kws, lambda s: len(s.response)).block("custom")
    assert stats == {
        "n": 3, "correct": 2, "majority_correct": True, "answer_entropy_nats": pytest.approx(
            -(2 / 3) * math.log(2 / 3) - (1 / 3) * math.log(1 / 3)),
        "answer_entropy_by_correctness": {"correct": 0.0, "wrong": 0.0},  # one answer on each side
        "length_sum": {"correct": 22, "wrong": 6},
        "keyword_occurrences": {"correct": [2, 1], "wrong": [1, 0]},
        "keyword_responses": {"correct": [1, 1], "wrong": [1, 0]},
    }
    other = problem_stats([Sample("q", False, "no_answer", None, None, "ok ok")], kws,
                          lambda s: len(s.response)).block("custom")
    pooled = pool_problem_blocks([stats, other], kws)
    assert pooled["problems"] == 2 and pooled["accuracy"] == pytest.approx((2 / 3 + 0) / 2) and pooled["maj"] == 0.5
    assert pooled["mean_length"] == {"correct": 11.0, "wrong": (6 + 5) / 2}
    assert pooled["keywords_per_response"]["ok"] == {"correct": 0.5, "wrong": 1.0}  # 1 of 2; 2 in 2 responses
    assert pooled["keyword_presence"]["ok"] == {"correct": 0.5, "wrong": 0.5}  # 1 response of 2 on each side
    assert pooled["reflection_per_response"] == {"correct": 1.5, "wrong": 1.5}
    # Entropy by correctness: a mean over the problems with responses on that side (q has no correct one, r no
    # wrong one), so r's log 2 is halved on the correct side and missing from the wrong side.
    two_forms = problem_stats([Sample("r", True, "correct", k, "box") for k in ("1", "0.5")], kws).block("chars")
    assert pool_problem_blocks([stats, other, two_forms], kws)["answer_entropy_by_correctness"] == {
        "correct": pytest.approx(math.log(2) / 2), "wrong": 0.0}
    assert pool_problem_blocks([], kws)["accuracy"] is None


def test_summarize_keeps_a_block_per_problem():
    out = summarize(_samples(), keywords=["wait"])
    assert out["keywords"] == ["wait"] and out["per_problem"].keys() == {"p1", "p2"}
    assert out["per_problem"]["p1"]["correct"] == 3 and out["per_problem"]["p2"]["n"] == 4
    assert out["per_problem"]["p1"]["keyword_responses"] == {"correct": [3], "wrong": [0]}
    assert out["keyword_presence"]["wait"] == {"correct": 1.0, "wrong": 0.0}
    assert [b["bin"] for b in summarize(_samples(), bins="paper-a6")["difficulty_bins"]] == ["0-1", "2", "3", "4"]


def test_length_unit_characters_by_default_or_tokens():
    samples = [Sample("p", True, "correct", "1", "box", "abcdef", num_tokens=2),
               Sample("p", False, "wrong", "2", "box", "abc", num_tokens=1)]
    chars, tokens = summarize(samples), summarize(samples, length_unit="tokens")
    assert (chars["length_unit"], chars["length"]) == ("chars", {"mean": 4.5, "mean_correct": 6, "mean_wrong": 3})
    assert (tokens["length_unit"], tokens["length"]) == ("tokens", {"mean": 1.5, "mean_correct": 2, "mean_wrong": 1})
    assert tokens["per_problem"]["p"]["length_sum"] == {"correct": 2, "wrong": 1}
    with pytest.raises(ValueError, match="length_unit: tokens needs every sample's token count"):
        summarize(samples + [Sample("q", True, "correct", "1", "box", "x")], length_unit="tokens")
    with pytest.raises(ValueError, match="length_unit: 'words' is not one of chars, tokens"):
        summarize(samples, length_unit="words")


def test_summarize_rejects_k_above_n():
    with pytest.raises(ValueError, match="n = 4"):
        summarize(_samples(), ks=[8])
