"""`rlvsdistill launch -- CMD ...`: a PyTorchJob pod's training command, with an exit code that training-operator's
``restartPolicy: ExitCode`` reads the way the run needs.

The operator recreates a pod whose container exits 128-255 (killed, or retryable) and fails the whole job on 1-127.
``accelerate launch`` exits 1 whatever went wrong, so a Master whose Worker was killed (node lost, OOM, preempted)
would fail the run instead of resuming it. Mapped here: 0 stays 0; 2, rlvsdistill's exit for a bad config, stays 2
(permanent: retrying cannot fix it); anything else becomes 143 (retryable: the pod is recreated and resumes from
the newest complete checkpoint, at most ``runPolicy.backoffLimit`` times). SIGTERM and SIGINT reach the command.
"""

from __future__ import annotations

import logging
import signal
import subprocess

from .io import UserError

logger = logging.getLogger(__name__)

PERMANENT = 2  # rlvsdistill's exit code for a config error (cli.main)
RETRYABLE = 143  # 128 + SIGTERM: in the ExitCode policy's retryable range


def exit_code_for(returncode: int) -> int:
    """The pod's exit code for the training command's (negative: killed by that signal)."""
    if returncode in (0, PERMANENT):
        return returncode
    return RETRYABLE


def run(command: list[str]) -> int:
    """Run ``command``, forwarding SIGTERM/SIGINT to it; return the mapped exit code."""
    if not command:
        raise UserError("launch: give the command after '--' (e.g. rlvsdistill launch -- accelerate launch ...)")
    try:
        proc = subprocess.Popen(command)
    except OSError as exc:
        raise UserError(f"launch: cannot run {command[0]!r}: {exc.strerror}") from None
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: proc.send_signal(signum))
    returncode = proc.wait()
    code = exit_code_for(returncode)
    if code != returncode:
        logger.warning("training command exited %d; exiting %d so that the operator recreates this pod and the run "
                       "resumes from its newest complete checkpoint", returncode, code)
    return code
