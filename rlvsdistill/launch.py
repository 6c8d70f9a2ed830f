"""`rlvsdistill launch -- CMD ...`: a PyTorchJob pod's training command, with an exit code that training-operator's
``restartPolicy: ExitCode`` reads the way the run needs, and a bound on how often a failing run is retried.

The operator (v1.9) deletes and recreates a pod whose container exits 128-255 and fails the whole job on 1-127.
``accelerate launch`` exits 1 whatever went wrong, so a Master whose Worker was killed (node lost, OOM, preempted)
would fail the run instead of resuming it: 0 stays 0, 2 (rlvsdistill's exit for a bad config) stays 2, anything
else becomes 143 (retryable: the pod is recreated and resumes from the newest complete checkpoint).
Under ExitCode the operator counts only restarts of running containers toward ``runPolicy.backoffLimit``, never
recreated pods (kubeflow/trainer#2045), so it would retry a deterministic failure (a bad model id, an OOM at
every start) for ever. ``--max-attempts N`` bounds that here: each start is counted in
``$RLVSDISTILL_ROOT/.launch/$RLVSDISTILL_RUN/attempts-rank<RANK>.json`` on the volume, the count starts over when
a new complete checkpoint appears in ``--output-dir`` (the run made progress) and is removed on success; the N-th
failure in a row without progress exits 1, which fails the PyTorchJob for good. SIGTERM and SIGINT reach the command.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
from pathlib import Path

from .io import UserError, atomic_open
from .paths import latest_complete_checkpoint, resolve_output_dir, volume_root

logger = logging.getLogger(__name__)

PERMANENT = 2  # rlvsdistill's exit code for a config error (cli.main)
RETRYABLE = 143  # 128 + SIGTERM: in the ExitCode policy's retryable range
GIVE_UP = 1  # in the ExitCode policy's permanent range: the PyTorchJob fails


def exit_code_for(returncode: int) -> int:
    """The pod's exit code for the training command's (negative: killed by that signal)."""
    if returncode in (0, PERMANENT):
        return returncode
    return RETRYABLE


class Attempts:
    """This rank's starts of the run without progress, kept on the volume (a recreated pod keeps nothing else)."""

    def __init__(self, output_dir: str):
        rank = os.environ.get("RANK") or os.environ.get("PET_NODE_RANK") or "0"
        run = os.environ.get("RLVSDISTILL_RUN", Path(output_dir).name)
        self.path = volume_root() / ".launch" / run / f"attempts-rank{rank}.json"
        self.output_dir = resolve_output_dir(output_dir)

    def start(self) -> int:
        """Count this start; returns the number of starts since the last new checkpoint (this one included)."""
        checkpoint = latest_complete_checkpoint(self.output_dir)
        checkpoint = checkpoint.name if checkpoint else None
        try:
            state = json.loads(self.path.read_text())
        except (OSError, ValueError):
            state = {}
        count = state.get("attempts", 0) + 1 if state.get("checkpoint") == checkpoint else 1
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(self.path) as f:
            json.dump({"attempts": count, "checkpoint": checkpoint}, f)
        return count

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def run(command: list[str], max_attempts: int | None = None, output_dir: str | None = None) -> int:
    """Run ``command``, forwarding SIGTERM/SIGINT to it; return the mapped exit code (GIVE_UP after
    ``max_attempts`` failed starts in a row without a new checkpoint in ``output_dir``)."""
    if not command:
        raise UserError("launch: give the command after '--' (e.g. rlvsdistill launch -- accelerate launch ...)")
    if (max_attempts is None) != (output_dir is None):
        raise UserError("launch: --max-attempts and --output-dir go together")
    attempts = Attempts(output_dir) if max_attempts else None
    attempt = attempts.start() if attempts else None
    if attempts:
        logger.info("attempt %d of at most %d without a new checkpoint", attempt, max_attempts)
    try:
        proc = subprocess.Popen(command)
    except OSError as exc:
        raise UserError(f"launch: cannot run {command[0]!r}: {exc.strerror}") from None
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: proc.send_signal(signum))
    returncode = proc.wait()
    code = exit_code_for(returncode)
    if code == 0 and attempts:
        attempts.clear()
    if code == RETRYABLE and attempts and attempt >= max_attempts:
        logger.error("training command exited %d on attempt %d of %d without a new checkpoint: the failure repeats, "
                     "so this pod exits %d and the PyTorchJob fails (see the earlier attempts' logs: kubectl logs "
                     "--previous does not keep them; a recreated pod has the same name)", returncode, attempt,
                     max_attempts, GIVE_UP)
        return GIVE_UP
    if code != returncode:
        logger.warning("training command exited %d; exiting %d so that the operator recreates this pod and the run "
                       "resumes from its newest complete checkpoint", returncode, code)
    return code
