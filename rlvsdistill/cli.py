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
    from .grading import EXTRACT_MODES

    p.add_argument("--extract", default="box+fallback", choices=EXTRACT_MODES,
                   help="where to find the answer: the last box; the last box, else the response's end "
                   "(counted separately); the last box, else math-verify's extraction over the whole response "
                   "(box+free: the released code's reward); or that extraction alone ('without format')")
    p.add_argument("--order", default="gold_first", choices=("gold_first", "pred_first"),
                   help="argument order of math-verify's verify(); pred_first is the paper's code (default: %(default)s)")
    p.add_argument("--workers", type=int, help="grading processes (default: the CPUs available)")
    p.add_argument("--item-timeout", type=float, default=10.0, help="hard wall-clock bound per answer, seconds")
    p.add_argument("--k", type=_parse_ks, help="pass@k values, e.g. 1,8,64 (default: 1,2,4,...,n)")
    p.add_argument("--bins", type=_parse_bins, help="difficulty bins of the correct count, e.g. 0,1-4,5-16,17-256")
    p.add_argument("--tokenizer", help="tokenizer (model directory or Hub id) to measure lengths in tokens "
                   "(default: the records' num_tokens if every record has one, else characters)")
    p.set_defaults(func=_run_grade)


def _run_grade(args) -> int:
    from .grading import GraderSettings
    from .scoring import grade_file

    summary = grade_file(
        args.input, args.out, args.problems, mode=args.extract, settings=GraderSettings(order=args.order),
        workers=args.workers, item_timeout=args.item_timeout, ks=args.k, bins=args.bins, tokenizer=args.tokenizer,
    )
    headline = {k: v for k, v in summary.items() if k.startswith(("accuracy", "pass@", "maj@", "verdicts", "problems"))}
    print(json.dumps(headline, indent=2))
    print(f"wrote {args.out}/verdicts.jsonl and {args.out}/summary.json")
    return 0


# Commands driven by a config file: name -> (config kind, "module:function", help).
CONFIG_COMMANDS = {
    "grpo": ("grpo", "rlvsdistill.train.grpo:main", "GRPO (RLVR) training with TRL"),
    "sft": ("sft", "rlvsdistill.train.sft:main", "SFT distillation with TRL (loss on completions only)"),
    "generate": ("generate", "rlvsdistill.train.generate:main",
                 "sample a teacher n times per problem (one shard), grade, and with one shard also merge and "
                 "write the filtered distillation data"),
    "generate-merge": ("generate", "rlvsdistill.train.generate:merge_main",
                       "merge a teacher's shards, then filter them into the distillation data"),
    "eval": ("eval", "rlvsdistill.evaluate:main",
             "sample n per problem (one shard), grade, and with one shard also merge and summarize"),
    "eval-merge": ("eval", "rlvsdistill.evaluate:merge_main",
                   "merge an evaluation's shards into samples.jsonl and summary.json"),
}


def _add_config_command(sub, name: str) -> None:
    kind, _, help_text = CONFIG_COMMANDS[name]
    p = sub.add_parser(name, help=help_text, description=f"{help_text}. Config: flat YAML (TRL's argument names "
                       "for training, plus this project's fields); KEY=VALUE overrides follow.")
    p.add_argument("--config", required=True, help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override a config key")
    p.set_defaults(func=_run_config_command, name=name)


def _run_config_command(args) -> int:
    import importlib

    from .config import load_config

    kind, target, _ = CONFIG_COMMANDS[args.name]
    cfg = load_config(kind, args.config, args.overrides)  # every check before any model is loaded
    module, function = target.split(":")
    result = getattr(importlib.import_module(module), function)(cfg)
    if result is not None:
        print(json.dumps(result, indent=2))
    return 0


def _add_tiny_model(sub) -> None:
    p = sub.add_parser("tiny-model", help="write a tiny random Qwen2 model and a locally trained tokenizer")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--corpus", help="text file (one document per line) to train the tokenizer on "
                   "(default: built-in arithmetic and prompt-template text)")
    p.set_defaults(func=_run_tiny_model)


def _run_tiny_model(args) -> int:
    from .tiny_model import build_tiny_model

    corpus = None
    if args.corpus:
        try:
            with open(args.corpus, encoding="utf-8") as f:
                corpus = [line.rstrip("\n") for line in f if line.strip()]
        except OSError as exc:
            raise UserError(f"--corpus: {args.corpus}: {exc.strerror}") from None
    out = build_tiny_model(args.out, seed=args.seed, hidden_size=args.hidden_size, layers=args.layers, corpus=corpus)
    print(f"wrote {out}")
    return 0


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="compare evaluation runs: Markdown tables and PNG plots",
                       description="Compare merged evaluation runs (the first is the base model).")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="evaluation run directories with summary.json")
    p.add_argument("--out", required=True, help="output directory for report.md and the plots")
    p.set_defaults(func=_run_report)


def _run_report(args) -> int:
    from .report import build_report

    path = build_report(args.runs, args.out)
    print(path.read_text().split("## pass@k")[0])
    print(f"wrote {path}")
    return 0


def _add_cluster_commands(sub) -> None:
    def cluster_args(p):
        p.add_argument("--cluster", help="cluster settings YAML (configs/cluster/); default: built-in defaults")
        p.add_argument("--namespace", help="override the settings' namespace")
        p.add_argument("--context", help="kubeconfig context (default: the current one)")

    p = sub.add_parser("submit", help="render, validate and create a run's Kubernetes objects",
                       description="Render the run's objects from its config and the cluster settings, validate "
                       "them against the Kubernetes and PyTorchJob schemas, then create them (or print with "
                       "--dry-run).")
    p.add_argument("kind", choices=("grpo", "sft", "generate", "eval"))
    p.add_argument("--config", required=True, help="job config YAML (configs/paper/, configs/cpu/, ...)")
    p.add_argument("--image-tag", help="tag of the rlvsdistill image to run (required)")
    p.add_argument("--name", help="run name (default: from the kind and the config file name)")
    p.add_argument("--dry-run", action="store_true", help="print the YAML and send nothing")
    p.add_argument("--replace", action="store_true", help="delete a run of the same name first")
    p.add_argument("--crd", help="PyTorchJob CRD YAML to validate against (default: read from the cluster)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override a job config key")
    cluster_args(p)
    p.set_defaults(func=_run_submit)
    for name, help_text in (("status", "show a run's objects and pods"), ("logs", "print a run's logs"),
                            ("cancel", "delete a run's objects and pods")):
        q = sub.add_parser(name, help=help_text)
        q.add_argument("run", help="run name")
        if name == "logs":
            q.add_argument("-f", "--follow", action="store_true", help="stream the first pod's log")
            q.add_argument("-c", "--container", help="container (default: the pod's main one)")
        cluster_args(q)
        q.set_defaults(func=_run_run_command, command_name=name)


def _settings(args):
    import dataclasses

    from .cluster.settings import load_settings

    settings = load_settings(args.cluster)
    return dataclasses.replace(settings, namespace=args.namespace) if args.namespace else settings


def _run_submit(args) -> int:
    import os

    from .cluster.render import prepare_run, render_objects, to_yaml
    from .cluster.validate import CRD_ENV, crd_schema_from_file, validate_objects

    settings = _settings(args)
    run = prepare_run(args.kind, args.config, args.overrides, settings, args.image_tag, args.name, args.cluster)
    crd_path = args.crd or os.environ.get(CRD_ENV)
    schema = crd_schema_from_file(crd_path) if crd_path else None
    if args.dry_run:
        objects = render_objects(run)
        if schema is None and any(o["kind"] == "PyTorchJob" for o in objects):
            print(f"note: PyTorchJob not checked against its CRD (pass --crd FILE or set ${CRD_ENV})",
                  file=sys.stderr)
            objects_to_check = [o for o in objects if o["kind"] != "PyTorchJob"]
        else:
            objects_to_check = objects
        problems = validate_objects(objects_to_check, settings.kubernetes_version, schema)
        if problems:
            raise UserError("the rendered objects do not validate:\n  " + "\n  ".join(problems))
        sys.stdout.write(to_yaml(run, objects))
        return 0
    from .cluster.submit import Cluster, submit

    created = submit(run, Cluster(settings.namespace, args.context), args.replace, schema)
    print(f"run '{run.name}' submitted ({', '.join(created)}); image {run.image}, config hash {run.config_hash}")
    print(f"follow it:  rlvsdistill logs {run.name} -f" + (f" --cluster {args.cluster}" if args.cluster else ""))
    print(f"   or:      kubectl -n {settings.namespace} logs -f -l rlvsdistill.io/run={run.name}")
    return 0


def _run_run_command(args) -> int:
    from .cluster import submit as api

    settings = _settings(args)
    cluster = api.Cluster(settings.namespace, args.context)
    if args.command_name == "status":
        print(json.dumps(api.status(args.run, cluster), indent=2))
    elif args.command_name == "logs":
        api.logs(args.run, cluster, follow=args.follow, container=args.container)
    else:
        deleted = api.cancel(args.run, cluster)
        print(f"deleted {', '.join(deleted)}" if deleted else f"no run '{args.run}' in {settings.namespace}")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the study in miniature on one CPU (base, distillation, GRPO, eval, report)")
    p.add_argument("--fresh", action="store_true", help="start over instead of reusing finished stages")
    p.add_argument("--quick", action="store_true", help="a few steps of each stage (what CI runs)")
    p.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    from .demo import run

    run(fresh=args.fresh, quick=args.quick)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlvsdistill", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_grade(sub)
    for name in CONFIG_COMMANDS:
        _add_config_command(sub, name)
    _add_report(sub)
    _add_cluster_commands(sub)
    _add_demo(sub)
    _add_tiny_model(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # KEY=VALUE overrides may follow options too (`submit grpo --config F --image-tag T lr=1e-6`), which
    # argparse alone does not collect once an earlier positional was matched.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(a.startswith("-") or "=" not in a for a in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
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
