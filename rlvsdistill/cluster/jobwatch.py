"""The eval merge's wait for its shards: it follows the shards Job through the API server (with the pod's
service-account token; plain HTTPS, since the image does not carry the `kubernetes` client) and the shard
markers on the volume.

A shard that failed for good (``status.failedIndexes``, or a Failed Job) ends the wait at once with the reason.
The deadline counts only while the Job is not suspended, so time spent queued in Kueue does not use it up.
Outside a cluster (no token), only the volume is watched, up to the deadline. A transient API error (the server
unreachable, 5xx, 429) is logged and retried with backoff, within the same deadline.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..io import UserError
from ..paths import is_complete, shard_dir

logger = logging.getLogger(__name__)

SHARDS_JOB_ENV = "RLVSDISTILL_SHARDS_JOB"
SERVICEACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class JobReader:
    """Reads one Job's object from the API server with a bearer token (re-read each time: it is rotated)."""

    def __init__(self, server: str, namespace: str, name: str, token_file: str | os.PathLike,
                 ca_file: str | os.PathLike):
        self.url = f"{server}/apis/batch/v1/namespaces/{namespace}/jobs/{name}"
        self.namespace, self.name, self.token_file = namespace, name, Path(token_file)
        self.context = ssl.create_default_context(cafile=str(ca_file))

    @classmethod
    def in_cluster(cls) -> "JobReader | None":
        """From the pod's environment and mounted token; None outside a cluster or without a shards Job name."""
        name, host = os.environ.get(SHARDS_JOB_ENV), os.environ.get("KUBERNETES_SERVICE_HOST")
        sa = Path(SERVICEACCOUNT_DIR)
        if not (name and host and (sa / "token").is_file()):
            return None
        host = f"[{host}]" if ":" in host else host
        server = f"https://{host}:{os.environ.get('KUBERNETES_SERVICE_PORT', '443')}"
        return cls(server, (sa / "namespace").read_text().strip(), name, sa / "token", sa / "ca.crt")

    def read(self) -> dict:
        request = urllib.request.Request(self.url, headers={
            "Authorization": f"Bearer {self.token_file.read_text().strip()}", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=30) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise UserError(f"the shards Job {self.namespace}/{self.name} no longer exists (cancelled?); "
                                "not merging") from None
            if exc.code in (401, 403):
                raise UserError(f"cannot read Job {self.namespace}/{self.name} ({exc.code}): the merge Job's "
                                "service account needs 'get' on jobs (k8s/rbac.yaml: rlvsdistill-merge)") from None
            raise


MAX_RETRY_SECONDS = 300.0


def transient(exc: BaseException) -> bool:
    """An API error worth retrying: no connection (URLError, a timeout, a reset), 429 or a 5xx answer."""
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code == 429 or exc.code >= 500
    return isinstance(exc, (urllib.error.URLError, OSError))


def job_verdict(job: dict) -> str | None:
    """'complete', or the reason the shards can never all complete (raised as an error), or None: running."""
    status, name = job.get("status", {}), job["metadata"]["name"]
    where = f"shards Job {job['metadata'].get('namespace')}/{name}"
    if status.get("failedIndexes"):
        raise UserError(f"{where}: shard(s) {status['failedIndexes']} failed permanently (their retries are used "
                        f"up), so the evaluation cannot be merged; see `kubectl get events --field-selector "
                        f"involvedObject.name={name}` and the failed pods' logs")
    conditions = {c["type"]: c for c in status.get("conditions", []) if c.get("status") == "True"}
    for kind in ("Failed", "FailureTarget"):
        if kind in conditions:
            c = conditions[kind]
            raise UserError(f"{where} failed ({c.get('reason')}: {c.get('message')}); not merging")
    return "complete" if "Complete" in conditions else None


def wait_for_shards(run_dir: Path, num_shards: int, wait_seconds: float, reader: JobReader | None = None,
                    poll_seconds: float = 30.0, settle_seconds: float = 120.0) -> list[int]:
    """Wait until every shard's marker exists; returns the shards still missing when the wait ends (the caller
    refuses to merge them). Raises at once when the shards Job reports a permanently failed shard."""
    if reader is None:
        reader = JobReader.in_cluster()
    counted, last, completed_at = 0.0, time.monotonic(), None
    suspended, failures = False, 0
    while True:
        missing = [i for i in range(num_shards) if not is_complete(shard_dir(run_dir, i, num_shards))]
        if not missing:
            return []
        now = time.monotonic()
        job = None
        if reader is not None:
            try:
                job = reader.read()
                failures = 0
            except Exception as exc:  # noqa: BLE001 - re-raised unless transient
                if not transient(exc):
                    raise
                failures += 1
                logger.warning("cannot read the shards Job (%s); retrying (attempt %d)", exc, failures)
        if job is not None:
            suspended = bool(job.get("spec", {}).get("suspend"))
            if job_verdict(job) == "complete":
                # Every pod succeeded: the markers are written; a shared filesystem may show them a little late.
                completed_at = completed_at or now
                if now - completed_at >= settle_seconds:
                    return missing
        if not suspended:
            counted += now - last
        last = now
        if counted >= wait_seconds:
            return missing
        logger.info("waiting for shard(s) %s of %d%s", missing, num_shards, " (Job suspended: queued)" if suspended
                    else f" ({counted:.0f}s of {wait_seconds:.0f}s)")
        # Backoff while the API server fails: poll_seconds, doubled per failure, at most MAX_RETRY_SECONDS.
        time.sleep(min(poll_seconds * 2 ** failures, max(poll_seconds, MAX_RETRY_SECONDS)))
