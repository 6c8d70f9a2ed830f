"""A study: every run of the paper in one file (``configs/study/*.yaml``), checked as a graph before anything is
sent, then submitted in order (``rlvsdistill study plan|submit|status``).

The file names each run by a key, which is also its run name: its job config (and overrides), the hours it is
expected to take, and what it produces (a cell of Table 3 or 4, a figure). Its outputs and inputs are read from
the config: the outputs are ``output_dir`` and a generate run's ``output_file``; the inputs are the absolute paths
among ``model_name_or_path``, ``dataset_name``, ``student_results`` and ``teacher_samples`` (Hub ids and named
datasets are downloaded, not made). ``{root}`` in the file stands for the runs' root on the volume.

The graph is refused, with the study file and the run key named, when an input is made by no run and is not listed
under ``existing``; when two runs' outputs are the same or nested, unless one ``continues`` the other and their
config hashes are equal; when the runs form a cycle. A run is complete when its completion marker is on the volume
(where the volume is mounted, as in the in-cluster study Job) or its workload's Job condition says so. Without the
volume, a finished run whose Jobs their TTL has deleted (7 days) looks absent and is created again; it then finds
its outputs on the volume (an eval skips its finished parts, a trainer resumes from its last checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .config import parse_overrides, read_yaml
from .io import UserError

REPO = Path(__file__).resolve().parents[1]
KIND_PREFIXES = ("grpo", "sft", "generate", "eval")
INPUT_KEYS = ("model_name_or_path", "dataset_name", "student_results", "teacher_samples")
RUN_KEYS = {"config", "kind", "overrides", "hours", "continues", "table3", "table4", "figure"}
TABLE3_KEYS, TABLE4_KEYS = ("model", "split", "row"), ("model", "student", "teacher", "split")
STATES = ("complete", "failed", "running", "ready", "waiting")


@dataclass
class StudyRun:
    """One run of a study: its config with overrides applied, and what it reads, writes and produces."""

    key: str
    kind: str
    config: str
    overrides: list[str]
    values: dict
    hours: float
    continues: str | None = None
    table3: dict | None = None
    table4: dict | None = None
    figure: str | None = None
    outputs: list[str] = field(default_factory=list)  # absolute paths on the volume
    inputs: list[tuple[str, str]] = field(default_factory=list)  # (config key, absolute path)
    needs: list[str] = field(default_factory=list)  # keys of the runs that make its inputs

    @property
    def marker(self) -> str:
        """The file whose existence says the run finished (written last, or atomically)."""
        if self.kind == "generate":
            return self.outputs[-1]  # output_file, written atomically after the merge and the filters
        if self.kind == "eval":
            return f"{self.outputs[0]}/.complete"
        return f"{self.outputs[0]}/final/.complete"

    def produces(self) -> str:
        from .paper import MODELS

        out = []
        if self.table3:
            t = self.table3
            out.append(f"Table 3 {MODELS.get(t['model'], t['model'])} {t['row']} {t['split']}")
        if self.table4:
            t = self.table4
            out.append(f"Table 4 {MODELS.get(t['model'], t['model'])} student {t['student']} teacher {t['teacher']} "
                       f"{t['split']}")
        if self.figure:
            out.append(self.figure)
        return "; ".join(out) or "-"


@dataclass
class Study:
    path: str
    root: str
    runs: dict[str, StudyRun]
    existing: list[str]
    order: list[str] = field(default_factory=list)


def _under(path: str, top: str) -> bool:
    return path == top or PurePosixPath(path).is_relative_to(top)


def _config_path(text: str) -> str:
    """A study's config path: as given if it exists from here, else relative to the repository (the image's /app)."""
    return text if Path(text).exists() or Path(text).is_absolute() else str(REPO / text)


def _substitute(value, root: str):
    return value.replace("{root}", root) if isinstance(value, str) else value


def study_cluster(path: str) -> str | None:
    """The cluster settings file a study names (``cluster:``), used when no --cluster is given."""
    value = read_yaml(path).get("cluster")
    return _config_path(str(value)) if value else None


def load_study(path: str, root: str) -> Study:
    """Read a study file (``{root}``: the runs' root on the volume); every problem at once, each naming its run."""
    data = read_yaml(path)
    problems = [f"{path}: {k}: unknown key (expected cluster, existing, runs)" for k in data
                if k not in ("cluster", "existing", "runs")]
    runs_in = data.get("runs")
    if not isinstance(runs_in, dict) or not runs_in:
        raise UserError(f"{path}: runs: expected a mapping of run keys to runs")
    from .cluster.render import NAME_MAX
    from .cluster.settings import DNS_LABEL
    from .config import check_values

    runs = {}
    for key, spec in runs_in.items():
        where = f"{path}: runs.{key}"
        if not isinstance(spec, dict):
            problems.append(f"{where}: expected a mapping")
            continue
        problems += [f"{where}: {k}: unknown key (expected {', '.join(sorted(RUN_KEYS))})" for k in spec
                     if k not in RUN_KEYS]
        if not DNS_LABEL.fullmatch(str(key)) or len(str(key)) > NAME_MAX:
            problems.append(f"{where}: the key is the run name: lower case letters, digits and '-', at most "
                            f"{NAME_MAX} characters")
        if "config" not in spec:
            problems.append(f"{where}: config: required")
            continue
        config = _config_path(str(spec["config"]))
        kind = spec.get("kind") or re.split(r"[_.]", Path(config).name)[0]
        if kind not in KIND_PREFIXES:
            problems.append(f"{where}: kind: {kind!r} is not one of {', '.join(KIND_PREFIXES)} (name the config "
                            "KIND_*.yaml or set kind)")
            continue
        raw = spec.get("overrides") or {}
        overrides = [f"{k}={_substitute(v, root) if not isinstance(v, (dict, list)) else json.dumps(v)}"
                     for k, v in raw.items()]
        try:
            values = {**read_yaml(config), **parse_overrides(overrides)}
        except UserError as exc:
            problems.append(f"{where}: {exc}")
            continue
        problems += [f"{where}: {config}: {p}" for p in check_values(kind, dict(values), hardware=False)]
        hours = spec.get("hours")
        if not isinstance(hours, (int, float)) or hours <= 0:
            problems.append(f"{where}: hours: required, the expected wall-clock hours (a positive number)")
            hours = 0.0
        for table, keys in (("table3", TABLE3_KEYS), ("table4", TABLE4_KEYS)):
            if table in spec and (not isinstance(spec[table], dict) or set(spec[table]) != set(keys)):
                problems.append(f"{where}: {table}: expected the keys {', '.join(keys)}")
        run = StudyRun(key, kind, config, overrides, values, float(hours), spec.get("continues"),
                       spec.get("table3"), spec.get("table4"), spec.get("figure"))
        run.outputs, run.inputs = _outputs(run, root), _inputs(run, root)
        runs[key] = run
    existing = [_substitute(str(p), root) for p in data.get("existing") or []]
    existing = [p if p.startswith("/") else f"{root}/{p}" for p in existing]
    if problems:
        raise UserError(f"{path}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    return Study(path, root, runs, existing)


def _on_volume(value: str, root: str) -> str:
    """A config's path as an absolute path: relative ones live under the runs' root (as ``resolve_output_dir``)."""
    return str(PurePosixPath(value if value.startswith("/") else f"{root}/{value}"))


def _outputs(run: StudyRun, root: str) -> list[str]:
    v = run.values
    if run.kind != "generate":
        return [_on_volume(str(v["output_dir"]), root)]
    out_file = _on_volume(str(v["output_file"]), root)
    if v.get("teacher_samples"):
        return [out_file]
    samples = v.get("output_dir") or str(PurePosixPath(out_file).with_suffix("")) + ".samples"
    return [_on_volume(str(samples), root), out_file]


def _inputs(run: StudyRun, root: str) -> list[tuple[str, str]]:
    found = []
    for key in INPUT_KEYS:
        value = run.values.get(key)
        if not isinstance(value, str) or not value:
            continue
        if key == "teacher_samples" or value.startswith("/"):
            found.append((key, _on_volume(value, root)))
    return found


def local_hash(run: StudyRun) -> str:
    """A config hash without cluster settings (local studies: the demo)."""
    return hashlib.sha256(json.dumps([run.kind, run.values], sort_keys=True, default=str).encode()).hexdigest()[:12]


def check_graph(study: Study, config_hash=local_hash) -> list[str]:
    """Link every input to the run that makes it, check outputs and cycles; sets ``study.order``. Returns the
    problems (each naming the study file and run key)."""
    where = {k: f"{study.path}: runs.{k}" for k in study.runs}
    problems = []
    runs = list(study.runs.values())
    for run in runs:
        if run.continues is not None and run.continues not in study.runs:
            problems.append(f"{where[run.key]}: continues: {run.continues!r} is not a run of this study")
        run.needs = []
        for key, path in run.inputs:
            makers = [o.key for o in runs if o is not run and any(_under(path, out) for out in o.outputs)]
            if makers:
                run.needs += [m for m in makers if m not in run.needs]
            elif not any(_under(path, e) for e in study.existing):
                problems.append(f"{where[run.key]}: {key}: {path} is made by no run of the study and is not listed "
                                "under existing:")
        if run.continues in study.runs and run.continues not in run.needs:
            run.needs.append(run.continues)
        problems += _teacher_problems(study, run, where[run.key])
    for i, a in enumerate(runs):
        for b in runs[i + 1:]:
            shared = [(x, y) for x in a.outputs for y in b.outputs if _under(x, y) or _under(y, x)]
            if not shared:
                continue
            declared = a.continues == b.key or b.continues == a.key
            if declared and config_hash(a) == config_hash(b):
                continue
            x, y = shared[0]
            why = (f"declared to continue one another, but their config hashes differ ({config_hash(a)} vs "
                   f"{config_hash(b)})" if declared else "give each its own output_dir, or declare `continues:` "
                   "when one resumes the other with the same config")
            problems.append(f"{where[b.key]}: writes {y}, and runs.{a.key} writes {x}: {why}")
    order, done = [], set()
    while len(order) < len(runs):
        ready = [r.key for r in runs if r.key not in done and all(n in done for n in r.needs)]
        if not ready:
            cycle = _cycle({r.key: r.needs for r in runs if r.key not in done})
            problems.append(f"{where[cycle[0]]}: the runs form a cycle: {' -> '.join(cycle)}")
            break
        order.append(ready[0])
        done.add(ready[0])
    study.order = order
    return problems


def _teacher_problems(study: Study, run: StudyRun, where: str) -> list[str]:
    """A filter of another run's samples (``teacher_samples``) must describe them: its sampling keys equal the
    teacher run's, else it would be refused only when it runs, days later."""
    from .train.generate import TEACHER_KEYS

    path = dict(run.inputs).get("teacher_samples")
    teacher = next((o for o in study.runs.values() if o is not run and path in o.outputs), None)
    if teacher is None:
        return []
    diff = [f"{k}: {teacher.values.get(k)!r} there, {run.values.get(k)!r} here" for k in TEACHER_KEYS
            if teacher.values.get(k) != run.values.get(k)]
    return [f"{where}: teacher_samples: runs.{teacher.key} samples with other settings ({'; '.join(diff)})"] if diff \
        else []


def _cycle(needs: dict[str, list[str]]) -> list[str]:
    """One cycle among runs none of which can start (each needs another of them)."""
    path, node = [], next(iter(needs))
    while node not in path:
        path.append(node)
        node = next(n for n in needs[node] if n in needs)
    return path[path.index(node):] + [node]


def validate(study: Study, config_hash=local_hash) -> Study:
    problems = check_graph(study, config_hash)
    if problems:
        raise UserError(f"{study.path}: the study does not hold together: {len(problems)} problem(s):\n  "
                        + "\n  ".join(problems))
    return study


# ---------------------------------------------------------------------------------------------------------
# On a cluster
# ---------------------------------------------------------------------------------------------------------


def prepare(study: Study, settings, image, cluster_path: str | None = None) -> dict:
    """Every run of the study made ready for the cluster (``render.prepare_run``: the same checks as ``submit``)
    and the graph validated with the runs' config hashes; returns {key: Run}. Nothing is sent."""
    from .cluster.render import prepare_run

    prepared, problems = {}, []
    for key, run in study.runs.items():
        try:
            prepared[key] = prepare_run(run.kind, run.config, run.overrides, settings, image, key, cluster_path)
        except UserError as exc:
            problems.append(f"{study.path}: runs.{key}: {exc}")
    if problems:
        raise UserError(f"{study.path}: {len(problems)} run(s) cannot be rendered:\n  " + "\n  ".join(problems))
    validate(study, lambda r: prepared[r.key].config_hash)
    return prepared


def run_gpus(run) -> int:
    """GPUs the run holds at once: every pod its workloads may run together."""
    from .cluster.render import render_objects
    from .cluster.submit import WORKLOADS, pod_requests

    total = 0
    for obj in render_objects(run):
        if obj["kind"] not in WORKLOADS:
            continue
        per_pod = [int(need[run.settings.gpu_resource]) for need in pod_requests(obj, run.settings.gpu_resource)]
        if obj["kind"] == "PyTorchJob":
            replicas = [r["replicas"] for r in obj["spec"]["pytorchReplicaSpecs"].values()]
            total += sum(g * n for g, n in zip(per_pod, replicas))
        else:
            total += per_pod[0] * obj["spec"].get("parallelism", 1)
    return total


def plan_text(study: Study, prepared: dict) -> str:
    """The plan as a table, in submission order, with GPUs x hours per run and in total."""
    rows, total = [], 0.0
    for i, key in enumerate(study.order, 1):
        run = study.runs[key]
        gpus = run_gpus(prepared[key])
        total += gpus * run.hours
        rows.append([str(i), key, run.kind, str(gpus), f"{run.hours:g}", f"{gpus * run.hours:g}",
                     ",".join(run.needs) or "-", run.produces()])
    header = ["#", "run", "kind", "GPUs", "hours", "GPU-h", "after", "produces"]
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header) - 1)]
    lines = [f"study {study.path}: {len(rows)} runs, {total:g} GPU-hours expected (GPUs held at once x the "
             "study's expected hours); inputs and outputs checked, no collision, no cycle"]
    for r in [header, *rows]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    return "\n".join(lines)


def workload_state(cluster, name: str) -> str | None:
    """complete / failed / running from the run's workloads' conditions; None when the run has no objects."""
    from .cluster.render import RUN_LABEL
    from .cluster.submit import PYTORCHJOB

    selector = f"{RUN_LABEL}={name}"
    conditions = {}
    for job in cluster.batch.list_namespaced_job(cluster.namespace, label_selector=selector).items:
        conditions[job.metadata.name] = {c.type for c in job.status.conditions or [] if c.status == "True"}
    try:
        custom = cluster.custom.list_namespaced_custom_object(*PYTORCHJOB[:2], cluster.namespace, PYTORCHJOB[2],
                                                              label_selector=selector)
        for job in custom.get("items", []):
            conditions[job["metadata"]["name"]] = {
                {"Succeeded": "Complete"}.get(c["type"], c["type"]) for c in job.get("status", {}).get(
                    "conditions", []) if c.get("status") == "True"}
    except cluster.ApiException as exc:
        if exc.status != 404:
            raise
    if not conditions:
        return "running" if cluster.run_objects(name) else None
    if any("Failed" in c for c in conditions.values()):
        return "failed"
    last = conditions.get(f"{name}-merge", conditions.get(name, set()))  # the merge ends a sharded run
    return "complete" if "Complete" in last else "running"


def states(study: Study, cluster, volume: Path | None) -> dict[str, str]:
    """Each run's state, in order: complete, failed, running, ready (inputs complete) or waiting."""
    out = {}
    for key in study.order:
        run = study.runs[key]
        on_volume = volume is not None and _local(run.marker, study.root, volume).exists()
        state = "complete" if on_volume else workload_state(cluster, key)
        if state is None:
            state = "ready" if all(out[n] == "complete" for n in run.needs) else "waiting"
        out[key] = state
    return out


def _local(path: str, root: str, volume: Path) -> Path:
    """Where a path of the runs' root is on this machine's mount of the volume."""
    return volume / PurePosixPath(path).relative_to(root) if _under(path, root) else Path(path)


def submit_study(study: Study, prepared: dict, cluster, volume: Path | None = None, wait: bool = False,
                 poll_seconds: float = 60.0, out=None, schema: dict | None = None) -> dict[str, str]:
    """Create every run whose inputs are complete, in order; skip what is complete or running. With ``wait``,
    repeat until every run is complete (or one failed and nothing else can start). Returns the states."""
    from .cluster.submit import submit

    out = out or sys.stdout  # looked up at call time: the stream may have been replaced since import
    reported: dict[str, str] = {}
    while True:
        now = states(study, cluster, volume)
        for i, key in enumerate(study.order, 1):
            if now[key] == "ready":
                created = submit(prepared[key], cluster, pytorchjob_schema=schema)
                now[key] = "submitted"
                print(f"[{i}/{len(now)}] {key}: submitted ({', '.join(created)})", file=out, flush=True)
            elif reported.get(key) != now[key] and now[key] != "waiting":
                print(f"[{i}/{len(now)}] {key}: {now[key]}", file=out, flush=True)
        reported = now
        done = sum(s == "complete" for s in now.values())
        print(f"study {Path(study.path).name}: {done} of {len(now)} runs complete", file=out, flush=True)
        failed = [k for k, s in now.items() if s == "failed"]
        active = [k for k, s in now.items() if s in ("running", "submitted")]
        if done == len(now) or not wait or (failed and not active):
            if failed:
                raise UserError(f"{study.path}: run(s) failed: {', '.join(failed)}; see `rlvsdistill logs NAME`, "
                                "then `rlvsdistill cancel NAME` and run `study submit` again to redo them")
            return now
        time.sleep(poll_seconds)


def status_text(study: Study, now: dict[str, str]) -> str:
    lines = [f"study {study.path}: " + ", ".join(f"{sum(s == x for s in now.values())} {x}" for x in STATES)]
    width = max(len(k) for k in now)
    for key in study.order:
        blocked = [n for n in study.runs[key].needs if now[n] != "complete"]
        waits = f"  waits for {', '.join(blocked)}" if blocked and now[key] == "waiting" else ""
        lines.append(f"  {key.ljust(width)}  {now[key]:<8}{waits}".rstrip())
    return "\n".join(lines)


def default_study_name(path: str) -> str:
    return "study-" + re.sub(r"[^a-z0-9]+", "-", Path(path).stem.lower()).strip("-")
