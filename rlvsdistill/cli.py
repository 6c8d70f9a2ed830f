"""The ``rlvsdistill`` command: parses arguments, configures logging, and hands off to one module per command."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .io import UserError


def _bins_spec(text: str) -> str:
    """--bins: a binning name or explicit edges, checked for syntax here and against n once n is known."""
    from .metrics import NAMED_BINNINGS, parse_edges

    if text not in NAMED_BINNINGS:
        try:
            parse_edges(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _report_bins_spec(text: str) -> str:
    """report --bins: as ``_bins_spec``, or 'figures' (each figure in its appendix binning)."""
    from .report import PER_FIGURE

    return text if text == PER_FIGURE else _bins_spec(text)


BINS_HELP = ("bins of the correct count: a name (paper-main, paper-fig8, paper-fig10, paper-a6: the paper's bins "
             "for n = 256, scaled to other n by ceil(edge * n / 256)) or explicit edges covering 0..n, "
             "e.g. 0,1-4,5-16,17-256")


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
    p.add_argument("--workers", type=int,
                   help="grading processes (default: $RLVSDISTILL_CPU_REQUEST, else the cgroup's CPU quota, else "
                   "the CPUs available, divided by $LOCAL_WORLD_SIZE)")
    p.add_argument("--item-timeout", type=float, default=10.0, help="hard wall-clock bound per answer, seconds")
    p.add_argument("--k", type=_parse_ks, help="pass@k values, e.g. 1,8,64 (default: 1,2,4,...,n)")
    p.add_argument("--bins", type=_bins_spec, help=BINS_HELP + " (default: paper-main)")
    from .metrics import KEYWORD_MATCHES, LENGTH_UNITS

    p.add_argument("--length-unit", choices=LENGTH_UNITS, default="chars",
                   help="response lengths in characters (as the paper's released code) or in tokens: the records' "
                   "num_tokens, or --tokenizer's count (default: %(default)s)")
    p.add_argument("--tokenizer", help="tokenizer (model directory or Hub id) to count each response's tokens, "
                   "for --length-unit tokens")

    p.add_argument("--keyword-match", choices=KEYWORD_MATCHES, default="word",
                   help="count reflection keywords as whole words or phrases ('ok' is not in 'look'), or as plain "
                   "lower-case substrings (default: %(default)s)")
    p.set_defaults(func=_run_grade)


def _run_grade(args) -> int:
    from .grading import GraderSettings
    from .scoring import grade_file

    summary = grade_file(
        args.input, args.out, args.problems, mode=args.extract, settings=GraderSettings(order=args.order),
        workers=args.workers, item_timeout=args.item_timeout, ks=args.k, bins=args.bins, tokenizer=args.tokenizer,
        keyword_match=args.keyword_match, length_unit=args.length_unit,
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


def _add_launch(sub) -> None:
    p = sub.add_parser("launch", help="run a PyTorchJob pod's training command; exit 143 (retryable) on failure, "
                       "1 (permanent) once --max-attempts starts in a row made no new checkpoint")
    p.add_argument("--max-attempts", type=int, help="failed starts in a row without a new checkpoint before the "
                   "run fails for good (counted on the volume, per rank)")
    p.add_argument("--output-dir", help="the run's output_dir, where new checkpoints show progress")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND ARGS... (accelerate launch ...)")
    p.set_defaults(func=_run_launch)


def _run_launch(args) -> int:
    from .launch import run

    return run(args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd, args.max_attempts, args.output_dir)


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
    from .paper import MODELS, SPLITS

    p = sub.add_parser("report", help="compare evaluation runs: Markdown tables and the paper's figures as PNGs",
                       description="Compare merged evaluation runs (the first is the base model): accuracy and "
                       "capability, pass@k, and the paper's Figures 8, 9, 10, 13 and 14 by the base model's bins.")
    p.add_argument("runs", nargs="*", metavar="RUN_DIR", help="evaluation run directories with summary.json "
                   "(optional with --study)")
    p.add_argument("--out", required=True, help="output directory for report.md and the plots")
    p.add_argument("--bins", type=_report_bins_spec, default="paper-main", help=BINS_HELP + " for every figure, or "
                   "'figures': each in its appendix binning (paper-fig8 for Figures 8 and 9, paper-fig10 for "
                   "Figure 10, paper-a6 for Figures 13 and 14) (default: %(default)s, the main text's)")
    p.add_argument("--hardest", type=int, metavar="K", help="only the K problems the base solves least often "
                   "(ties broken by problem id), e.g. 50 as in the paper's Figure 16")
    p.add_argument("--paper", nargs="?", const="all", choices=(*MODELS, "all"),
                   help="print the paper's Table 3 rows for this model beside the runs'; with --study: Tables 3 and "
                   "4 for this model, or both (no value)")
    p.add_argument("--paper-split", choices=tuple(SPLITS), default="math500",
                   help="which Table 3 split --paper shows (default: %(default)s)")
    p.add_argument("--study", help="a study file (configs/study/): fill the paper's Tables 3 and 4 from its runs' "
                   "summaries (their table3 / table4 cells) beside the paper's numbers, into OUT/paper_tables.md")
    p.add_argument("--root", help="with --study: the directory holding its runs, what {root} stands for (default: "
                   "$RLVSDISTILL_ROOT, else runs/)")
    p.set_defaults(func=_run_report)


def _run_report(args) -> int:
    from .report import build_report, paper_tables

    if args.study:
        from .paths import volume_root

        model = None if args.paper in (None, "all") else args.paper
        tables = paper_tables(args.study, str(Path(args.root or volume_root()).resolve()), args.out, model)
        print(tables.read_text())
        print(f"wrote {tables}")
        if not args.runs:
            return 0
        args.paper = None if args.paper == "all" else args.paper
    elif not args.runs:
        raise UserError("report: give the evaluation run directories (the first is the base model), or --study FILE")
    elif args.paper == "all":
        raise UserError("--paper: name the model (qwen2.5-math-1.5b or qwen2.5-3b), or give --study for both tables")
    path = build_report(args.runs, args.out, bins=args.bins, hardest=args.hardest, paper_model=args.paper,
                        paper_split=args.paper_split)
    print(path.read_text().split("## pass@k")[0])
    print(f"wrote {path}")
    return 0


def _cluster_args(p) -> None:
    p.add_argument("--cluster", help="cluster settings YAML (configs/cluster/); default: built-in defaults")
    p.add_argument("--namespace", help="override the settings' namespace")
    p.add_argument("--context", help="kubeconfig context (default: the current one)")


def _image_args(p) -> None:
    p.add_argument("--image", help="the image as one reference, REGISTRY/PATH[:TAG|@sha256:DIGEST] (a digest is "
                   "pulled IfNotPresent and recorded in an annotation; a tag is pulled Always)")
    p.add_argument("--registry", help="registry and path the image was pushed to (e.g. registry.example.org/team); "
                   "the image is REGISTRY/<image_repository>:<--image-tag>")
    p.add_argument("--image-tag", help="tag of the image (with --registry, or an image_repository naming one)")
    p.add_argument("--local-image", action="store_true", help="the image is already on every node (kind/minikube "
                   "load): no registry needed, never pulled")


def _add_cluster_commands(sub) -> None:
    cluster_args = _cluster_args

    p = sub.add_parser("submit", help="render, validate and create a run's Kubernetes objects",
                       description="Render the run's objects from its config and the cluster settings, validate "
                       "them against the Kubernetes and PyTorchJob schemas, then create them (or print with "
                       "--dry-run).")
    p.add_argument("kind", choices=("grpo", "sft", "generate", "eval", "smoke"),
                   help="smoke: a few GRPO steps with the vLLM sidecar on a tiny model, then an eval (no config)")
    p.add_argument("--config", help="job config YAML (configs/paper/, configs/cpu/, ...); not for smoke")
    _image_args(p)
    p.add_argument("--name", help="run name (default: from the kind and the config file name)")
    p.add_argument("--dry-run", action="store_true", help="print the YAML and send nothing")
    p.add_argument("--replace", action="store_true", help="delete a run of the same name first")
    p.add_argument("--prefetch-model", action="store_true",
                   help="instead of the run, submit a Job that downloads its model into model_cache_pvc")
    p.add_argument("--resume-anyway", action="store_true",
                   help="resume the checkpoints on the volume even if they were made with another config hash")
    p.add_argument("--crd", help="PyTorchJob CRD YAML to validate against (default: read from the cluster)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override a job config key")
    cluster_args(p)
    p.set_defaults(func=_run_submit)
    for name, help_text in (("status", "show a run's objects and pods"), ("logs", "print a run's logs"),
                            ("cancel", "delete a run's objects and pods")):
        q = sub.add_parser(name, help=help_text)
        q.add_argument("run", help="run name")
        if name == "logs":
            q.add_argument("-f", "--follow", action="store_true",
                           help="stream every pod's log, lines prefixed with the pod name, until the run ends")
            q.add_argument("-c", "--container", help="container (default: the pod's main one)")
        cluster_args(q)
        q.set_defaults(func=_run_run_command, command_name=name)


def _settings(args):
    import dataclasses

    from .cluster.settings import load_settings

    settings = load_settings(args.cluster)
    return dataclasses.replace(settings, namespace=args.namespace) if args.namespace else settings


def _settings_and_image(args, required: bool = True):
    """The cluster settings and the image of the options: with ``render.prepare_run``, the one way every command
    turns a config into a run. ``required=False``: without image options, a placeholder (plans send nothing)."""
    from .cluster.image import ImageRef, image_from_options

    settings = _settings(args)
    if not required and not (args.image or args.image_tag or args.registry):
        return settings, ImageRef(settings.image_repository, "plan", local=True)
    return settings, image_from_options(settings.image_repository, args.image, args.image_tag, args.registry,
                                        args.local_image)


def _run_submit(args) -> int:
    import os

    from .cluster.render import prepare_run, render_objects, to_yaml
    from .cluster.validate import CRD_ENV, crd_schema_from_file, validate_objects

    if (args.config is None) != (args.kind == "smoke"):
        raise UserError("--config: required for grpo, sft, generate and eval" if args.config is None
                        else "--config: smoke renders its own config (use KEY=VALUE overrides, e.g. max_steps=5)")
    settings, image = _settings_and_image(args)
    run = prepare_run(args.kind, args.config, args.overrides, settings, image, args.name, args.cluster,
                      args.resume_anyway, args.prefetch_model)
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


def _add_study(sub) -> None:
    p = sub.add_parser("study", help="the whole study as one plan: check it, submit its runs in order, show them",
                       description="A study file (configs/study/) names every run: its config, the hours it is "
                       "expected to take, and the table cell or figure it produces. plan: render every run and check "
                       "the graph (every input made by a run or listed as existing, no shared output unless one "
                       "run continues another with the same config hash, no cycle), then print it with GPUs x "
                       "hours; nothing is sent. submit: create each run whose inputs are complete, skipping what is "
                       "complete or running (run it again, add --wait, or --in-cluster for a CPU Job that does "
                       "it). status: each run's state. Cluster settings: --cluster, else the study file's "
                       "`cluster:`, else the built-in defaults.")
    p.add_argument("action", choices=("plan", "submit", "status"))
    p.add_argument("file", help="study YAML (configs/study/paper.yaml)")
    p.add_argument("--root", help="the runs' root on the volume, what {root} stands for (default: the settings' "
                   "mount_path/runs, where the jobs write)")
    p.add_argument("--volume", help="where that root is mounted on this machine, to read completion markers (the "
                   "in-cluster study Job: the root itself); without it, runs are judged by their Jobs' conditions")
    p.add_argument("--wait", action="store_true", help="submit: keep going until every run is complete")
    p.add_argument("--poll-seconds", type=float, default=60.0, help="submit --wait: seconds between checks")
    p.add_argument("--in-cluster", action="store_true", help="submit: create a small CPU Job that runs "
                   "`study submit --wait` in the cluster (service account rlvsdistill-study, k8s/rbac.yaml)")
    p.add_argument("--crd", help="PyTorchJob CRD YAML to validate against (default: read from the cluster)")
    _image_args(p)
    _cluster_args(p)
    p.set_defaults(func=_run_study)


def _run_study(args) -> int:
    import os
    from pathlib import Path

    from . import study as api

    args.cluster = args.cluster or api.study_cluster(args.file)
    settings, image = _settings_and_image(args, required=args.action == "submit")
    root = args.root or f"{settings.mount_path}/runs"
    plan = api.load_study(args.file, root)
    prepared = api.prepare(plan, settings, image, args.cluster)
    if args.action == "plan":
        print(api.plan_text(plan, prepared))
        return 0
    from .cluster.submit import Cluster

    cluster = Cluster(settings.namespace, args.context)
    volume = Path(args.volume) if args.volume else None
    if args.action == "status":
        print(api.status_text(plan, api.states(plan, cluster, volume)))
        return 0
    if args.in_cluster:
        from .cluster.render import study_run
        from .cluster.submit import submit

        run = study_run(args.file, root, settings, image, api.default_study_name(args.file), args.cluster)
        created = submit(run, cluster)
        print(f"study Job '{run.name}' submitted ({', '.join(created)}); follow it: rlvsdistill logs {run.name} -f")
        return 0
    from .cluster.validate import CRD_ENV, crd_schema_from_file

    crd = args.crd or os.environ.get(CRD_ENV)
    api.submit_study(plan, prepared, cluster, volume, args.wait, args.poll_seconds,
                     schema=crd_schema_from_file(crd) if crd else None)
    return 0


def _add_smoke(sub) -> None:
    p = sub.add_parser("smoke", help="a few steps of every GPU path on a tiny model, then PASS/FAIL (make gpu-check)",
                       description="On a CUDA machine: make a tiny model, then SFT with bf16 + ZeRO-3, GRPO with HF "
                       "generate, vLLM colocate and vLLM server (where vllm is installed), and a 4-problem eval, "
                       "each a few steps; prints a summary and a final SMOKE PASS or SMOKE FAIL line.")
    p.add_argument("--config", help="YAML of the options (what the smoke Job's ConfigMap holds)")
    p.add_argument("--out", dest="output_dir", help="output directory (relative: under $RLVSDISTILL_ROOT; "
                   "default gpu-check)")
    p.add_argument("--steps", type=lambda s: s.split(","), help="comma-separated steps to run (default: all that "
                   "this machine can)")
    p.add_argument("--max-steps", type=int, help="optimizer steps of each training step (default 3)")
    p.set_defaults(func=_run_smoke)


def _run_smoke(args) -> int:
    from .smoke import load_options, run

    return run(load_options(args.config, output_dir=args.output_dir, steps=args.steps, max_steps=args.max_steps))


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
    _add_study(sub)
    _add_demo(sub)
    _add_smoke(sub)
    _add_tiny_model(sub)
    _add_launch(sub)
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
