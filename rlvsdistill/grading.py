"""The single grader: answer extraction plus math-verify, behind the GRPO reward, the distillation filter and evaluation.

Data flow: each response is reduced to an answer in this process (cheap string work: the last ``\\boxed{}``),
then the distinct (gold, answer) pairs go, grouped by gold, to worker processes that run math-verify's
``parse``/``verify``. Workers stream one result per item, so the parent knows which item is running and can
kill a worker stuck past the per-item deadline (math-verify's own ``signal.alarm`` timeout works only in a
process's main thread and cannot interrupt C code), count that item as a timeout and carry on with a new worker.
"""

from __future__ import annotations

import atexit
import enum
import logging
import math
import multiprocessing
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Literal

from .io import UserError

logger = logging.getLogger(__name__)

ExtractMode = Literal["box", "box+fallback", "box+free", "free"]
# box: the last \\boxed{} only (the paper's "with format" score); box+fallback: else the response's last
# FALLBACK_TAIL_CHARS characters; box+free: else math-verify's extraction over the whole response (the released
# code's reward_func); free: math-verify's extraction over the whole response, box or not ("without format").
EXTRACT_MODES: tuple[str, ...] = ("box", "box+fallback", "box+free", "free")
VerifyOrder = Literal["gold_first", "pred_first"]


class Status(str, enum.Enum):
    """What grading one response can conclude."""

    CORRECT = "correct"
    WRONG = "wrong"
    NO_ANSWER = "no_answer"  # empty response, or no answer found where the mode looks
    PARSE_ERROR = "parse_error"  # an answer was found but math-verify could not parse it (or the gold)
    TIMEOUT = "timeout"  # math-verify's timeout, or the pool's hard deadline


@dataclass(frozen=True)
class Verdict:
    """The grade of one response.

    ``answer`` is the extracted answer text; ``source`` says where it came from: ``box`` (the last
    ``\\boxed{}``/``\\fbox{}``), ``fallback`` (math-verify's extraction on a response without a box) or ``free``
    (math-verify's extraction over the whole response). ``key`` is a canonical form for grouping equal answers.
    ``gold_error`` is set when the gold answer itself could not be parsed: such an item says nothing about
    the model and a reward should skip it.
    """

    status: Status
    answer: str | None = None
    source: str | None = None
    key: str | None = None
    error: str | None = None
    gold_error: bool = False

    @property
    def correct(self) -> bool:
        return self.status is Status.CORRECT

    def to_dict(self) -> dict:
        return {
            "status": self.status.value,
            "answer": self.answer,
            "source": self.source,
            "key": self.key,
            "error": self.error,
            "gold_error": self.gold_error,
        }


# ---------------------------------------------------------------------------------------------------------
# Extraction (pure string work, runs in the caller's process)
# ---------------------------------------------------------------------------------------------------------

_BOX_COMMANDS = ("\\boxed", "\\fbox")
# The fallback reads only the end of a response without a box: final answers sit there ("so the answer is 9"),
# and a truncated, rambling response (the usual reason for a missing box) otherwise costs seconds to parse.
# Measured on the shared SkyThought responses without a box: 325/351 agree with the labels at 300 characters,
# 319/351 with the whole response.
FALLBACK_TAIL_CHARS = 300


def extract_boxed(text: str) -> str | None:
    """Return the content of the last ``\\boxed{...}`` or ``\\fbox{...}`` (balanced braces), or of ``\\boxed 5``.

    Returns None when there is no box or the last box is never closed.
    """
    start = max(text.rfind(cmd) for cmd in _BOX_COMMANDS)
    if start < 0:
        return None
    cmd = "\\boxed" if text.startswith("\\boxed", start) else "\\fbox"
    i = start + len(cmd)
    if i < len(text) and text[i] == "{":
        depth = 0
        for j in range(i, len(text)):
            ch = text[j]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    return text[i + 1 : j].strip()
        return None  # unbalanced: the box was cut off (e.g. max tokens reached)
    if i < len(text) and text[i] == " ":
        # "\boxed 5": the answer runs to the end of the math span or line
        rest = text[i + 1 :]
        for stop in ("$", "\n", "\\]", "\\)"):
            rest = rest.split(stop, 1)[0]
        rest = rest.strip().rstrip(".")
        return rest or None
    return None


# An exact rational literal: an integer, or \frac{a}{b} / \dfrac / \tfrac / \frac12, with an optional sign.
# No decimals: math-verify compares floats after rounding, which this shortcut must not second-guess.
_RATIONAL = re.compile(r"\s*(-)?\s*(?:(\d+)|\\[dt]?frac\s*\{\s*(\d+)\s*\}\s*\{\s*(\d+)\s*\}|\\[dt]?frac(\d)(\d))\s*")


def _rational_literal(text: str) -> Fraction | None:
    m = _RATIONAL.fullmatch(text)
    if not m:
        return None
    sign, integer, num, den, num1, den1 = m.groups()
    if integer is not None:
        value = Fraction(int(integer))
    else:
        numerator, denominator = int(num or num1), int(den or den1)
        if denominator == 0:
            return None
        value = Fraction(numerator, denominator)
    return -value if sign else value


def _literal_verdict(gold: str, answer: str) -> tuple[str, str] | None:
    """(status, key) when gold and answer are both exact rational literals (``12``, ``-\frac{3}{4}``), else None.

    For two such literals math-verify's verdict is exact equality of their values; deciding it here skips a parse
    and a sympy comparison per distinct answer, and such answers are the commonest in MATH.
    """
    g = _rational_literal(gold)
    a = _rational_literal(answer) if g is not None else None
    if a is None:
        return None
    return (Status.CORRECT if a == g else Status.WRONG).value, str(a)


@dataclass(frozen=True)
class _Task:
    """One distinct thing for a worker to grade: an extracted answer, or a whole text to extract from."""

    gold: str
    kind: Literal["answer", "text"]
    text: str


def _plan(response: str, mode: ExtractMode) -> tuple[str | None, str | None, Literal["answer", "text"] | None]:
    """Decide what to grade for one response: (answer or text, source, task kind); (None, None, None) = no answer."""
    if not response or not response.strip():
        return None, None, None
    if mode == "free":
        return response, "free", "text"
    boxed = extract_boxed(response)
    if boxed:
        return boxed, "box", "answer"
    if mode == "box+fallback":
        return response[-FALLBACK_TAIL_CHARS:], "fallback", "text"
    if mode == "box+free":
        return response, "free", "text"
    return None, None, None


# ---------------------------------------------------------------------------------------------------------
# Worker side: math-verify, in the main thread of a worker process
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GraderSettings:
    """How a worker calls math-verify.

    ``order`` "gold_first" is what math-verify documents (``verify(gold, pred)``); "pred_first" reproduces the
    paper's released code. ``signal_timeout`` is math-verify's own per-call timeout in seconds (None disables
    it, leaving only the pool's hard per-item deadline).
    """

    order: VerifyOrder = "gold_first"
    signal_timeout: int | None = 3
    float_rounding: int = 6


def _as_latex(answer: str) -> str:
    return "\\boxed{" + answer + "}"


def _canonical(parsed: list) -> str | None:
    for item in parsed:
        if not isinstance(item, str):
            return str(item)
    return str(parsed[-1]).strip() if parsed else None


class _WorkerGrader:
    """Grades tasks with math-verify, caching parsed golds (each gold is parsed once per worker)."""

    def __init__(self, settings: GraderSettings):
        from math_verify import parse, verify  # imported here: workers pay for sympy, callers of extract_* do not
        from math_verify.errors import TimeoutException

        self._parse, self._verify, self._timeout_exc = parse, verify, TimeoutException
        self.settings = settings
        self._gold_cache: dict[str, tuple[list | None, str | None, bool]] = {}

    def _parse_text(self, text: str) -> list:
        return self._parse(text, parsing_timeout=self.settings.signal_timeout, raise_on_error=True)

    def gold(self, gold: str) -> tuple[list | None, str | None, bool]:
        """Return (parsed gold or None, error, timed_out)."""
        if gold not in self._gold_cache:
            if len(self._gold_cache) > 4096:
                self._gold_cache.clear()
            try:
                parsed = self._parse_text(_as_latex(gold))
                self._gold_cache[gold] = (parsed or None, None if parsed else "gold answer not parseable", False)
            except self._timeout_exc:
                self._gold_cache[gold] = (None, "timeout parsing gold answer", True)
            except Exception as exc:  # noqa: BLE001 - recorded in the verdict, counted as parse_error
                self._gold_cache[gold] = (None, f"gold: {type(exc).__name__}: {exc}"[:300], False)
        return self._gold_cache[gold]

    def grade(self, task: _Task) -> tuple[str, str | None, str | None, bool]:
        """Return (status, key, error, gold_error) for one task."""
        gold, gold_err, gold_timeout = self.gold(task.gold)
        if gold is None:
            return (Status.TIMEOUT if gold_timeout else Status.PARSE_ERROR).value, None, gold_err, True
        try:
            pred = self._parse_text(_as_latex(task.text) if task.kind == "answer" else task.text)
        except self._timeout_exc:
            return Status.TIMEOUT.value, None, "timeout parsing answer", False
        except Exception as exc:  # noqa: BLE001
            return Status.PARSE_ERROR.value, None, f"{type(exc).__name__}: {exc}"[:300], False
        if not pred:
            status = Status.PARSE_ERROR if task.kind == "answer" else Status.NO_ANSWER
            return status.value, None, None, False
        exact = _rational_verdict(gold, pred)
        if exact is not None:
            return exact.value, _canonical(pred), None, False
        first, second = (gold, pred) if self.settings.order == "gold_first" else (pred, gold)
        kwargs = dict(float_rounding=self.settings.float_rounding, timeout_seconds=self.settings.signal_timeout)
        error = None
        try:
            ok = self._verify(first, second, raise_on_error=True, **kwargs)
        except self._timeout_exc:
            return Status.TIMEOUT.value, _canonical(pred), "timeout comparing", False
        except Exception as exc:  # noqa: BLE001
            # One failing pair of representations aborts the strict call; the lenient one tries the others.
            error = f"compare: {type(exc).__name__}: {exc}"[:300]
            ok = self._verify(first, second, raise_on_error=False, **kwargs)
        return (Status.CORRECT if ok else Status.WRONG).value, _canonical(pred), error, False


def _rational_verdict(gold: list, pred: list) -> Status | None:
    """Exact verdict when both sides parsed to a single exact rational number (e.g. 3/4 vs 2/3), else None.

    Two different rationals are never equal, so math-verify's symbolic simplification (milliseconds per pair,
    most of the cost of a wrong answer) can be skipped; floats and expressions still go to ``verify``.
    """
    from sympy import Rational

    g = [x for x in gold if not isinstance(x, str)]
    p = [x for x in pred if not isinstance(x, str)]
    if len(g) == 1 and len(p) == 1 and isinstance(g[0], Rational) and isinstance(p[0], Rational):
        return Status.CORRECT if g[0] == p[0] else Status.WRONG
    return None


def _worker_main(conn: Connection, settings: GraderSettings) -> None:
    """Worker loop: receive a chunk of (task id, task), send back (task id, result) after each one."""
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # its timeouts and errors are counted in verdicts
    grader = _WorkerGrader(settings)
    while True:
        try:
            chunk = conn.recv()
        except EOFError:
            return
        if chunk is None:
            return
        for task_id, task in chunk:
            conn.send((task_id, grader.grade(task)))


# ---------------------------------------------------------------------------------------------------------
# Parent side: the pool
# ---------------------------------------------------------------------------------------------------------


CPU_REQUEST_ENV = "RLVSDISTILL_CPU_REQUEST"  # the container's CPU request, from the Downward API (render.py)
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _cgroup_cpu_quota(root: Path) -> float | None:
    """CPUs allowed by the cgroup's CFS quota (v2 ``cpu.max``, else v1 ``cpu.cfs_quota_us``), None when unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for v1 in (root / "cpu", root / "cpu,cpuacct"):
        try:
            quota = int((v1 / "cpu.cfs_quota_us").read_text())
            return None if quota <= 0 else quota / int((v1 / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
    return None


def pod_cpus() -> int:
    """The CPUs this container may use: its CPU request (``$RLVSDISTILL_CPU_REQUEST``, set from the Downward API),
    else its cgroup CPU quota, else the CPUs it may be scheduled on.

    A pod with a CPU request and no limit sees every CPU of its node; sizing by those would start hundreds of
    workers on a big GPU node.
    """
    raw = os.environ.get(CPU_REQUEST_ENV, "").strip()
    if raw:
        try:
            request = float(raw)
        except ValueError:
            raise UserError(f"${CPU_REQUEST_ENV}={raw!r} is not a number of CPUs") from None
        if request > 0:  # 0: no request set
            return max(1, math.ceil(request))
    quota = _cgroup_cpu_quota(CGROUP_ROOT)
    if quota:
        return max(1, math.ceil(quota))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def default_workers() -> int:
    """Worker processes per process: ``pod_cpus()`` shared by the container's ranks ($LOCAL_WORLD_SIZE), at least 1."""
    raw = os.environ.get("LOCAL_WORLD_SIZE", "1")
    try:
        ranks = max(1, int(raw))
    except ValueError:
        raise UserError(f"$LOCAL_WORLD_SIZE={raw!r} is not an integer") from None
    return max(1, pod_cpus() // ranks)


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    conn: Connection
    pending: deque = field(default_factory=deque)  # task ids sent and not yet answered, in order
    since: float = 0.0  # when the item at the head of `pending` started


class GraderPool:
    """Worker processes that grade responses with math-verify, with a hard wall-clock bound per item.

    Use as a context manager, or keep one for the life of a trainer (``close()`` ends the workers). Workers start
    from a fork server, which re-imports the program's ``__main__`` script in each worker: a script that imports
    torch at its top makes every worker import torch too (seconds of CPU each); import heavy modules inside
    ``main()``. The ``rlvsdistill`` command and ``python -m rlvsdistill`` are light.
    """

    def __init__(
        self,
        workers: int | None = None,
        item_timeout: float = 10.0,
        settings: GraderSettings | None = None,
        chunk_size: int = 32,
    ):
        if workers is not None and workers < 1:
            raise UserError(f"grader workers: {workers} must be at least 1 (unset: the pod's CPUs per rank)")
        self.n_workers = workers or default_workers()
        self.item_timeout = item_timeout
        self.settings = settings or GraderSettings()
        self.chunk_size = chunk_size
        self.killed_workers = 0
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(["rlvsdistill.grading", "math_verify"])
        # Started now, so that their start-up overlaps whatever the caller does before the first grade().
        self._workers: list[_Worker] = [self._start_worker() for _ in range(self.n_workers)]

    def __enter__(self) -> GraderPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start_worker(self) -> _Worker:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_worker_main, args=(child, self.settings), daemon=True)
        proc.start()
        child.close()
        return _Worker(proc, parent)

    def close(self) -> None:
        """Stop all workers."""
        for w in self._workers:
            try:
                w.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for w in self._workers:
            w.process.join(timeout=2)
            if w.process.is_alive():
                w.process.kill()
                w.process.join()
            w.conn.close()
        self._workers = []

    def grade(
        self,
        golds: Sequence[str],
        responses: Sequence[str],
        mode: ExtractMode = "box",
        progress: Callable[[int, int], None] | None = None,
    ) -> list[Verdict]:
        """Grade ``responses[i]`` against ``golds[i]``; returns one Verdict per response, in input order."""
        if len(golds) != len(responses):
            raise ValueError(f"{len(golds)} gold answers for {len(responses)} responses")
        if mode not in EXTRACT_MODES:
            raise ValueError(f"unknown extraction mode {mode!r}; expected one of {', '.join(EXTRACT_MODES)}")
        plans = [_plan(r, mode) for r in responses]
        task_ids: dict[_Task, int] = {}
        tasks: list[_Task] = []
        item_task: list[int | tuple | None] = []  # task id, a result decided here, or None (no answer)
        for gold, (text, _source, kind) in zip(golds, plans):
            if text is None:
                item_task.append(None)
                continue
            quick = _literal_verdict(str(gold), text) if kind == "answer" else None
            if quick:
                item_task.append((*quick, None, False))
                continue
            task = _Task(str(gold), kind, text)
            if task not in task_ids:
                task_ids[task] = len(tasks)
                tasks.append(task)
            item_task.append(task_ids[task])
        results = self._run(tasks, progress)
        verdicts = []
        for (text, source, kind), tid in zip(plans, item_task):
            if tid is None:
                verdicts.append(Verdict(Status.NO_ANSWER))
                continue
            status, key, error, gold_error = tid if isinstance(tid, tuple) else results[tid]
            answer = text if kind == "answer" else None
            verdicts.append(Verdict(Status(status), answer, source, key, error, gold_error))
        return verdicts

    def _chunks(self, tasks: list[_Task]) -> deque:
        by_gold: dict[str, list[int]] = {}
        for i, t in enumerate(tasks):
            by_gold.setdefault(t.gold, []).append(i)
        chunks = deque()
        for ids in by_gold.values():
            for s in range(0, len(ids), self.chunk_size):
                chunks.append([(i, tasks[i]) for i in ids[s : s + self.chunk_size]])
        return chunks

    def _run(self, tasks: list[_Task], progress: Callable[[int, int], None] | None) -> list[tuple]:
        results: list[tuple | None] = [None] * len(tasks)
        if not tasks:
            return []
        queue = self._chunks(tasks)
        done = 0

        def dispatch(w: _Worker) -> None:
            if queue and not w.pending:
                chunk = queue.popleft()
                try:
                    w.conn.send(chunk)
                except (BrokenPipeError, OSError):  # it died while idle: a new worker takes the chunk
                    queue.appendleft(chunk)
                    dispatch(replace(w, Status.PARSE_ERROR, "grading worker died"))
                    return
                w.pending.extend(tid for tid, _ in chunk)
                w.since = time.monotonic()

        def replace(w: _Worker, reason_status: Status, error: str) -> _Worker:
            nonlocal done
            if w.pending:  # a worker can also die idle, having answered everything it was sent
                stuck = w.pending.popleft()
                results[stuck] = (reason_status.value, None, error, False)
                done += 1
            rest = [(tid, tasks[tid]) for tid in w.pending]
            if rest:
                queue.appendleft(rest)
            w.process.kill()
            w.process.join()
            w.conn.close()
            self.killed_workers += 1
            fresh = self._start_worker()
            self._workers[self._workers.index(w)] = fresh
            return fresh

        for w in self._workers:
            dispatch(w)
        while done < len(tasks):
            busy = [w for w in self._workers if w.pending]
            now = time.monotonic()
            next_deadline = min(w.since + self.item_timeout for w in busy) - now
            ready = wait([w.conn for w in busy], timeout=max(0.0, next_deadline))
            for w in busy:
                if w.conn in ready:
                    try:
                        while w.conn.poll():
                            tid, res = w.conn.recv()
                            w.pending.popleft()
                            results[tid] = res
                            done += 1
                            w.since = time.monotonic()
                    except (EOFError, OSError):
                        code = w.process.exitcode
                        logger.warning("grading worker died (exit code %s); replacing it", code)
                        replace(w, Status.PARSE_ERROR, f"grading worker died (exit code {code})")
                        continue
                elif time.monotonic() - w.since > self.item_timeout:
                    logger.warning("grading item exceeded %.1fs; killing its worker", self.item_timeout)
                    replace(w, Status.TIMEOUT, f"exceeded the {self.item_timeout:g}s item deadline")
            for w in self._workers:
                dispatch(w)
            if progress:
                progress(done, len(tasks))
        return results  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------------
# Convenience entry points
# ---------------------------------------------------------------------------------------------------------

_shared_pool: GraderPool | None = None


def shared_pool(workers: int | None = None) -> GraderPool:
    """A process-wide pool (one per training rank), started on first use with ``workers`` (default:
    ``default_workers()``), then reused; closed at exit. For rewards called every training step."""
    global _shared_pool
    if _shared_pool is None:
        _shared_pool = GraderPool(workers=workers)
        atexit.register(_shared_pool.close)
    return _shared_pool


def count_statuses(verdicts: Iterable[Verdict]) -> dict[str, int]:
    """Count verdicts by status, every status present (zeros included)."""
    counts = {s.value: 0 for s in Status}
    for v in verdicts:
        counts[v.status.value] += 1
    return counts
