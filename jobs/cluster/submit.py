"""`csm-render submit`: run a job on a Ray cluster through Ray's Job Submission API (the dashboard's HTTP port).

The job's entrypoint is `python -m jobs.cli run ... --address auto` on the cluster; its runtime environment carries
this project (the `jobs` and `csm_worker` packages, uploaded by Ray) unless the cluster's image has it installed.
A submission id names the job: submitting an id the cluster already knows starts nothing and reports that job, so
a retried or scheduled submit never runs the same job twice.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from dataclasses import dataclass

from jobs.cluster import auth

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
POLL_S = 1.0  # how often --wait asks the cluster for new log lines and the job's status


@dataclass
class Submission:
    submission_id: str
    created: bool  # False: a job with this id existed already and nothing was submitted
    status: str


def entrypoint(run_args: list[str]) -> str:
    """The shell command the cluster runs: `csm-render run` through the module, so it works from py_modules too."""
    return shlex.join(["python", "-m", "jobs.cli", "run", *run_args, "--address", "auto"])


def cluster_path(arg: str) -> str:
    """Manifest and OUT arguments as the cluster sees them: URIs unchanged, local paths absolute (the entrypoint
    runs in a folder of Ray's choosing; the path must exist on the cluster, e.g. a shared file system)."""
    return arg if "://" in arg else os.path.abspath(arg)


def project_runtime_env(upload: bool) -> dict:
    """Ray uploads the two packages as py_modules; their dependencies are the cluster image's (infra/Dockerfile)."""
    if not upload:
        return {}
    import csm_worker
    import jobs

    return {"py_modules": [os.path.dirname(jobs.__file__), os.path.dirname(csm_worker.__file__)]}


def submit(address: str, run_args: list[str], submission_id: str | None, upload: bool = True) -> Submission:
    client = jobs_client(address)
    if submission_id:
        existing = _status(client, submission_id)
        if existing is not None:
            return Submission(submission_id, False, existing)
    try:
        sid = client.submit_job(entrypoint=entrypoint(run_args), submission_id=submission_id,
                                runtime_env=project_runtime_env(upload))
    except RuntimeError:
        # Two submits of one id racing: the cluster took the other one. Report that job instead.
        existing = _status(client, submission_id) if submission_id else None
        if existing is None:
            raise
        return Submission(submission_id, False, existing)
    return Submission(sid, True, _status(client, sid) or "PENDING")


def follow(address: str, submission_id: str, out=sys.stdout) -> tuple[str, int]:
    """Print the job's logs as they grow until it ends; returns (final status, exit code for this command):
    the job's own exit code when it ran (0 done, 1 some conversations failed, 2 bad input), else 1."""
    client = jobs_client(address)
    printed = 0
    while True:
        status = str(client.get_job_status(submission_id).value)
        logs = client.get_job_logs(submission_id)
        out.write(logs[printed:])
        out.flush()
        printed = len(logs)
        if status in TERMINAL:
            info = client.get_job_info(submission_id)
            code = info.driver_exit_code
            return status, code if code is not None else (0 if status == "SUCCEEDED" else 1)
        time.sleep(POLL_S)


def jobs_client(address: str):
    """A Jobs API client that sends the cluster's token when its dashboard has Ray token authentication on (in
    the Authorization header, as Ray's own clients do); a missing or refused token is one ClusterAuthError line."""
    from ray.job_submission import JobSubmissionClient

    token = auth.check_access("the cluster's Jobs API", auth.jobs_api_probe(address))
    try:
        return JobSubmissionClient(address, headers=token.header() if token else None)
    except Exception as e:
        if auth.is_auth_failure(e):  # refused after all (the token changed between the probe and now)
            raise auth.from_ray_error("the cluster's Jobs API", e) from None
        raise


def _status(client, submission_id: str) -> str | None:
    """The job's status, or None when the cluster has no job of that id. (Ray's get_job_info answers an unknown id
    with a ConnectionError, indistinguishable from an unreachable cluster, so the job list is searched instead.)"""
    for job in client.list_jobs():
        if job.submission_id == submission_id:
            return str(job.status.value if hasattr(job.status, "value") else job.status)
    return None
