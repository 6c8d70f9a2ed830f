"""`rlvsdistill launch`: the exit codes a PyTorchJob pod gives training-operator's restartPolicy ExitCode."""

import sys

import pytest

from conftest import run_cli
from rlvsdistill.launch import RETRYABLE, exit_code_for


@pytest.mark.parametrize("returncode,expected", [
    (0, 0),  # finished: the pod succeeds
    (2, 2),  # a config error (rlvsdistill's UserError): permanent, retrying cannot fix it
    (1, RETRYABLE),  # what accelerate launch exits when a peer was lost: retryable, the pod is recreated
    (-9, RETRYABLE),  # the training command was SIGKILLed (OOM): retryable
    (137, RETRYABLE),  # already in the retryable range: stays retryable
])
def test_exit_codes_map_to_the_operators_retry_rule(returncode, expected):
    assert exit_code_for(returncode) == expected
    assert (128 <= exit_code_for(returncode) <= 255) == (expected == RETRYABLE)


@pytest.mark.parametrize("code,expected", [(0, 0), (1, RETRYABLE), (2, 2)])
def test_launch_runs_the_command_and_maps_its_exit(code, expected):
    proc = run_cli("-m", "rlvsdistill", "launch", "--", sys.executable, "-c", f"import sys; sys.exit({code})")
    assert proc.returncode == expected, proc.stderr


def test_launch_without_a_command_is_a_named_error():
    proc = run_cli("-m", "rlvsdistill", "launch", "--")
    assert proc.returncode == 2 and "give the command after '--'" in proc.stderr
