"""The plain baseline grader the benchmark and the agreement test compare against.

A serial loop as the paper's released code does it: take the last ``\\boxed{...}`` of the response, then call
math-verify's ``parse`` on it and on the gold answer (re-parsed for every sample) and ``verify`` them.
"""

from math_verify import parse, verify


def last_box(text: str) -> str | None:
    """The last ``\\boxed{...}`` with its braces balanced, as a LaTeX string, or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth = 0
    for j in range(start + len("\\boxed"), len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[start : j + 1]
    return None


def baseline_grade(golds, responses) -> list[bool]:
    """True where the last box verifies against the gold (gold first), False otherwise."""
    out = []
    for gold, response in zip(golds, responses):
        box = last_box(response)
        out.append(bool(box) and verify(parse("\\boxed{" + gold + "}"), parse(box)))
    return out
