"""Connect to Ray: an embedded local cluster by default, a given address, or `auto` inside a Ray job.

Token authentication (on by default for local clusters in Ray 2.5x+) needs nothing here: `ray.init`
generates or reads the token itself; a remote cluster's token comes from RAY_AUTH_TOKEN in the environment.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager

import ray

# Environment variables the actors need to reach the same storage and tracking as the driver.
FORWARDED_ENV = ("SAFELATENT_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "MLFLOW_TRACKING_URI")


# Actors load models without download progress bars or advisory warnings in the driver's log.
QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}


def runtime_env() -> dict | None:
    """Env vars (never credentials) that actors started by this driver should see; set on each actor too, so a
    driver joining a running cluster passes its storage endpoint and tracking URI on.

    None inside a Ray job: the job was submitted with its runtime env (working_dir and env vars), every actor
    inherits it, and an actor-level env would only make Ray set up (and later clean up) another copy of it.
    """
    if in_ray_job():
        return None
    env = {**QUIET_ENV, **{name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}}
    return {"env_vars": env}


def in_ray_job() -> bool:
    """Whether this process is the driver of a job submitted through the Ray Jobs API."""
    return bool(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"))


@contextmanager
def connected(address: str | None = None, num_cpus: float | None = None, num_gpus: float | None = None,
              dashboard: bool = True) -> Iterator[dict]:
    """Connect for the duration of the block and yield the cluster's resources.

    `address` None (or "local") starts an embedded cluster with this machine's CPUs and GPUs (or the counts
    given) and shuts it down afterwards; "auto" or "ray://..."/"HOST:PORT" joins an existing one and leaves it
    running. Already connected (a test, a notebook): the current connection is used and left open.
    """
    started = False
    if not ray.is_initialized():
        if address in (None, "", "local"):
            ray.init(num_cpus=num_cpus if num_cpus is not None else os.cpu_count(), num_gpus=num_gpus,
                     include_dashboard=dashboard, runtime_env=runtime_env(), log_to_driver=True,
                     configure_logging=False)
        else:
            # A job's driver already runs in the runtime env it was submitted with; Ray refuses a second one
            # that sets the same keys, and the job's env reaches every actor anyway.
            ray.init(address=address, runtime_env=runtime_env(), log_to_driver=True, configure_logging=False)
        started = True
    try:
        yield ray.cluster_resources()
    finally:
        if started:
            ray.shutdown()


def dashboard_url() -> str | None:
    """The Ray dashboard's address for this connection, when it has one."""
    try:
        url = ray.get_runtime_context().worker.node.address_info.get("webui_url")  # type: ignore[attr-defined]
    except AttributeError:
        return None
    return f"http://{url}" if url and not url.startswith("http") else url
