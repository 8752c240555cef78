"""Run a pipeline on a remote Ray cluster through the Ray Jobs API (the dashboard's HTTP endpoint).

`safelatent submit PIPELINE -c CONFIG --address http://HEAD:8265 key=value ...` checks the config here,
then submits `python -m safelatent.cli <pipeline command> -c CONFIG ... --address auto` as a job: the
project folder (minus runs, data, virtual environments and git) is its working_dir unless the code is
baked into the cluster's image, and the storage and tracking variables of this shell go along in its
runtime_env. It streams the job's logs and exits with the job's result. For a cluster with token
authentication, set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) in this shell: the Jobs
client then sends the token with every request.
"""

import asyncio
import getpass
import importlib
import os
import re
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.connect import FORWARDED_ENV, QUIET_ENV
from safelatent.errors import ConfigError, SafelatentError

# Pipeline name → (CLI words that run it, default config under pipelines/configs/, "module:ConfigClass").
PIPELINES: dict[str, tuple[tuple[str, ...], str, str]] = {
    "rlaif-ppo": (("train", "rlaif-ppo"), "rlaif_ppo.yaml", "pipelines.rlaif_ppo:RLAIFPPOConfig"),
    "sls-rlaif": (("train", "sls-rlaif"), "sls_rlaif.yaml", "pipelines.sls_rlaif:SLSRLAIFConfig"),
    "direction-transfer": (("train", "direction-transfer"), "direction_transfer.yaml",
                           "pipelines.direction:DirectionTransferConfig"),
    "es2": (("train", "es2"), "es2.yaml", "pipelines.es2:ES2Config"),
    "safesteer": (("train", "safesteer"), "safesteer.yaml", "pipelines.safesteer:SafeSteerConfig"),
    "tune": (("tune",), "tune_sls.yaml", "pipelines.tune:TuneConfig"),
}
# Never uploaded as part of the working_dir: outputs, caches, environments, version control. gitignore syntax:
# a leading slash anchors to the project folder (a bare "data" would also drop the package safelatent/data).
WORKING_DIR_EXCLUDES = ["/.git", "/.venv", "/venv", "/runs", "/data", "/mlruns", "/mlartifacts", "__pycache__",
                        "/.pytest_cache", "/.ruff_cache", "*.egg-info", "/.whl", "*.db"]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
SECRET_NAME = re.compile(r"(^|_)(secret|password|passwd|token|key|credentials?|auth)(_|$)")


class JobError(SafelatentError):
    """A job could not be submitted, or ended other than SUCCEEDED."""


@dataclass
class Submission:
    pipeline: str
    config: Path
    overrides: list[str]
    address: str
    working_dir: Path | None = Path(".")
    env: dict[str, str] | None = None
    submission_id: str | None = None
    entrypoint_num_cpus: float = 0.0
    entrypoint_num_gpus: float = 0.0


def check(submission: Submission) -> str:
    """Validate the config (and overrides) here, before anything reaches the cluster; the run's name."""
    from safelatent.config import load_config

    if submission.pipeline not in PIPELINES:
        raise ConfigError(f"unknown pipeline {submission.pipeline!r}; one of {', '.join(PIPELINES)}")
    config_class = pipeline_config_class(submission.pipeline)
    config = load_config(config_class, submission.config, submission.overrides)
    if submission.working_dir is not None:
        root = submission.working_dir.resolve()
        if not submission.config.resolve().is_relative_to(root):
            raise ConfigError(f"the config {submission.config} is outside the working_dir {root}; the job could not "
                              "read it. Put it under the project folder, or pass --no-working-dir when the cluster's "
                              "image has it")
    return config.name


def pipeline_config_class(pipeline: str) -> type:
    module, name = PIPELINES[pipeline][2].split(":")
    return getattr(importlib.import_module(module), name)


def entrypoint(submission: Submission) -> str:
    """The job's command: the project's CLI as a module, so the uploaded code (not an installed copy) runs."""
    words = PIPELINES[submission.pipeline][0]
    config = (submission.config.resolve().relative_to(submission.working_dir.resolve()).as_posix()
              if submission.working_dir is not None else str(submission.config))
    command = ["python", "-m", "safelatent.cli", *words, "-c", config, *submission.overrides, "--address", "auto"]
    return shlex.join(command)


def runtime_env(submission: Submission, environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    forwarded = {name: environ[name] for name in FORWARDED_ENV if environ.get(name)}
    env = {**QUIET_ENV, **forwarded, **(submission.env or {})}
    runtime: dict[str, Any] = {"env_vars": env}
    if submission.working_dir is not None:
        runtime.update(working_dir=str(submission.working_dir.resolve()), excludes=WORKING_DIR_EXCLUDES)
    return runtime


def submission_id(pipeline: str, name: str, now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now if now is not None else time.time()))
    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"safelatent-{pipeline}-{name}-{stamp}")


def metadata(submission: Submission, name: str) -> dict[str, str]:
    from safelatent.evaluation.harness import git_commit

    return {"pipeline": submission.pipeline, "run_name": name, "config": str(submission.config),
            "overrides": " ".join(submission.overrides), "commit": git_commit(), "submitted_by": _user()}


def client(address: str) -> Any:
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except AuthenticationError:
        raise JobError(f"the cluster at {address} wants a token: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or "
                       "RAY_AUTH_TOKEN_PATH) to the cluster's token") from None
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise JobError(f"cannot reach the Ray Jobs API at {address}: {error}") from None


def submit(submission: Submission) -> str:
    """Check, then submit; the submission id."""
    name = check(submission)
    job_id = submission.submission_id or submission_id(submission.pipeline, name)
    return client(submission.address).submit_job(
        entrypoint=entrypoint(submission), submission_id=job_id, runtime_env=runtime_env(submission),
        metadata=metadata(submission, name), entrypoint_num_cpus=submission.entrypoint_num_cpus,
        entrypoint_num_gpus=submission.entrypoint_num_gpus)


def follow(address: str, job_id: str, write: Callable[[str], Any], timeout_s: float | None = None) -> str:
    """Stream the job's logs through `write` until it ends; its final status."""
    jobs = client(address)

    async def stream() -> None:
        async for lines in jobs.tail_job_logs(job_id):
            write(lines)

    try:
        asyncio.run(asyncio.wait_for(stream(), timeout_s))
    except TimeoutError:
        raise JobError(f"job {job_id} was still running after {timeout_s:g} s; it goes on: `safelatent jobs logs "
                       f"{job_id} --address {address}` follows it") from None
    return wait(address, job_id, timeout_s=60)


def wait(address: str, job_id: str, timeout_s: float, poll_s: float = 1.0) -> str:
    jobs = client(address)
    deadline = time.monotonic() + timeout_s
    while True:
        status = str(jobs.get_job_status(job_id))
        status = status.split(".")[-1]
        if status in TERMINAL:
            return status
        if time.monotonic() > deadline:
            raise JobError(f"job {job_id} is {status} after {timeout_s:g} s")
        time.sleep(poll_s)


def list_jobs(address: str) -> list[dict[str, Any]]:
    rows = []
    for job in client(address).list_jobs():
        rows.append({"submission_id": job.submission_id, "status": str(job.status).split(".")[-1],
                     "pipeline": (job.metadata or {}).get("pipeline", ""), "entrypoint": job.entrypoint,
                     "start_time": job.start_time, "message": job.message or ""})
    return sorted(rows, key=lambda row: row["start_time"] or 0)


def logs(address: str, job_id: str) -> str:
    return client(address).get_job_logs(job_id)


def stop(address: str, job_id: str) -> bool:
    return client(address).stop_job(job_id)


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    """KEY=VALUE pairs for the job's environment; secrets are refused (anyone who can see the job sees them):
    the cluster gets its credentials from its own secrets or instance roles."""
    env = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ConfigError(f"--env {pair!r} is not KEY=VALUE")
        if SECRET_NAME.search(key.lower()):
            raise ConfigError(f"--env {key}: looks like a secret; a job's environment is visible to anyone who can "
                              "list jobs. Give the cluster its credentials as a Kubernetes secret or instance role")
        env[key] = value
    return env


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
