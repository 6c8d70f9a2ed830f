"""The ``rlvsdistill`` command: parses arguments, configures logging, and hands off to one module per command."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from .io import UserError


def _parse_bins(text: str) -> list[tuple[int, int]]:
    """'0,1-4,5-16,17-64' -> [(0, 0), (1, 4), (5, 16), (17, 64)]."""
    bins = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            bins.append((int(lo), int(hi or lo)))
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad bin {part!r}: use LO-HI or N, comma-separated") from None
    return bins


def _parse_ks(text: str) -> list[int]:
    try:
        ks = [int(k) for k in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad k list {text!r}: use comma-separated integers") from None
    if any(k < 1 for k in ks):
        raise argparse.ArgumentTypeError("every k must be >= 1")
    return ks


def _add_grade(sub) -> None:
    p = sub.add_parser(
        "grade",
        help="grade a JSONL of responses and summarize accuracy / capability",
        description="Grade responses (fields: response, and gold or problem_id/unique_id) with math-verify; "
        "write verdicts.jsonl and summary.json to --out.",
    )
    p.add_argument("input", help="JSONL file of responses")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--problems", help="problem set JSONL (MATH-500 format) to look gold answers up by id")
    p.add_argument("--extract", default="box+fallback", choices=("box", "box+fallback", "free"),
                   help="where to find the answer: the last box; the last box, else the response's end "
                   "(counted separately); or math-verify's extraction over the whole response ('without format')")
    p.add_argument("--order", default="gold_first", choices=("gold_first", "pred_first"),
                   help="argument order of math-verify's verify(); pred_first is the paper's code (default: %(default)s)")
    p.add_argument("--workers", type=int, help="grading processes (default: the CPUs available)")
    p.add_argument("--item-timeout", type=float, default=10.0, help="hard wall-clock bound per answer, seconds")
    p.add_argument("--k", type=_parse_ks, help="pass@k values, e.g. 1,8,64 (default: 1,2,4,...,n)")
    p.add_argument("--bins", type=_parse_bins, help="difficulty bins of the correct count, e.g. 0,1-4,5-16,17-256")
    p.set_defaults(func=_run_grade)


def _run_grade(args) -> int:
    from .grading import GraderSettings
    from .scoring import grade_file

    summary = grade_file(
        args.input, args.out, args.problems, mode=args.extract, settings=GraderSettings(order=args.order),
        workers=args.workers, item_timeout=args.item_timeout, ks=args.k, bins=args.bins,
    )
    headline = {k: v for k, v in summary.items() if k.startswith(("accuracy", "pass@", "maj@", "verdicts", "problems"))}
    print(json.dumps(headline, indent=2))
    print(f"wrote {args.out}/verdicts.jsonl and {args.out}/summary.json")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlvsdistill", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_grade(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # per-item timeouts are counted, not logged
    try:
        return args.func(args)
    except UserError as exc:
        print(f"rlvsdistill {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
