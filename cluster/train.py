"""A small runner for Ray Train (Train V2) data-parallel loops: scaling, storage, resume and failure handling.

The driver calls `run_training(loop, loop_config, name=..., settings=..., storage=..., resume=...)`; every
worker runs `loop(loop_config)` in its own process with torch.distributed set up (gloo on CPU, nccl on GPU).
Inside the loop the worker-side helpers below keep the code rank-aware without touching Ray Train directly:

    def loop(config):
        model = ray.train.torch.prepare_model(build_model())      # DDP across the workers
        state = restore(lambda d: torch.load(d / "state.pt"))      # None on a fresh start
        start = state["step"] + 1 if state else 0
        for step in range(start, config["steps"]):
            ...
            report({"step": step, "loss": loss}, save_fn=lambda d: torch.save({...}, d / "state.pt"))

How Train V2 (Ray 2.60) resumes, which this module relies on: the run's state lives in
`<storage>/<name>/`, and the controller keeps `checkpoint_manager_snapshot.json` there, listing the checkpoints
reported so far. A new `TorchTrainer` with the same `RunConfig(storage_path, name)` loads that snapshot, and
`ray.train.get_checkpoint()` in every worker returns the latest checkpoint; the same happens when a failed worker
group is restarted within one run (`max_failures`). There is no `Trainer.restore` in V2. Because a fresh run
with an old name would silently resume, `run_training(resume=False)` refuses a name that has a snapshot.

Two Train V2 defaults are changed here, both so that a run can never hang or be killed by its own helper:
`FailureConfig.controller_failure_limit` (default -1: retry a worker group that cannot start forever) follows
`max_failures`, and the detached PlacementGroupCleaner is left out (see `_Trainer`).

`ray.train` is only imported in this module and in the loop's process, never in `safelatent/`.
"""

import os
import re
import tempfile
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlparse

import pyarrow.fs
import ray
import ray.train
import ray.train.torch
from pydantic import Field, field_validator

from cluster.connect import runtime_env
from cluster.placement import ResourceDemandError, describe
from safelatent import storage as s3_storage
from safelatent.config import Config
from safelatent.errors import ConfigError, SafelatentError

# The file Train V2 keeps in `<storage>/<name>/` listing the reported checkpoints; its presence means a later
# run with the same name resumes (see ray/train/v2/_internal/execution/checkpoint/checkpoint_manager.py).
SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

T = TypeVar("T")


class TrainSettings(Config):
    """How a Ray Train run is scaled, where it keeps its state and how it recovers from failures."""

    workers: int = Field(1, ge=1, description="Data-parallel worker processes (torch.distributed ranks).")
    use_gpu: bool | Literal["auto"] = Field("auto", description="One GPU per worker; auto: when the cluster has "
                                                                "GPUs.")
    cpus_per_worker: float = Field(1.0, gt=0, description="Logical CPUs each worker reserves.")
    storage: str | None = Field(None, description="Where Ray Train keeps run state and checkpoints: a local "
                                                  "directory or s3://bucket/prefix; null: <out_root>/<name>/ray_train.")
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint for an s3:// storage; null: the "
                                                          "SAFELATENT_S3_ENDPOINT_URL or AWS_ENDPOINT_URL variable.")
    max_failures: int = Field(1, ge=0, description="Restarts of the worker group after a worker fails; each "
                                                   "restart resumes from the latest checkpoint.")
    keep_checkpoints: int = Field(2, ge=1, description="Newest checkpoints kept in storage.")

    @field_validator("storage")
    @classmethod
    def _storage_kind(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.strip():
            raise ValueError("storage is empty; give a local directory or s3://bucket/prefix, or null for the "
                             "default")
        if value.startswith("s3://"):
            s3_storage.parse_s3_uri(value)  # raises ValueError naming the problem
        elif _URI_SCHEME.match(value):
            raise ValueError(f"storage {value!r} has an unsupported scheme; use a local directory or "
                             "s3://bucket/prefix")
        return value

    @field_validator("s3_endpoint_url")
    @classmethod
    def _endpoint_is_url(cls, value: str | None) -> str | None:
        if value is not None and urlparse(value).scheme not in ("http", "https"):
            raise ValueError(f"s3_endpoint_url {value!r} must be an http:// or https:// URL, e.g. "
                             "http://minio:9000")
        return value

    def storage_or(self, default: str | os.PathLike) -> str:
        """The configured storage, else `default` (pipelines pass <out_root>/<name>/ray_train)."""
        return self.storage if self.storage is not None else str(default)


@dataclass(frozen=True)
class TrainOutcome:
    """What a finished run left behind.

    `metrics` are rank 0's metrics reported with the latest checkpoint (Train V2 keeps metrics only with
    checkpoints, so a loop should checkpoint on its last report). `checkpoint` is that checkpoint as a local
    directory (downloaded when storage is remote), None when the run never checkpointed. `run_path` is where
    the run's state lives (`<storage>/<name>`). `return_value` is what rank 0's loop returned. `resumed` says
    whether the run started from the state of an earlier run of the same name.
    """

    metrics: dict[str, Any]
    checkpoint: Path | None
    run_path: str
    return_value: Any = None
    resumed: bool = False


# ----------------------------------------------------------------------------------------------------------------
# Driver side
# ----------------------------------------------------------------------------------------------------------------


def storage_filesystem(storage: str, endpoint_url: str | None = None) -> tuple[str, pyarrow.fs.FileSystem | None]:
    """The (path, filesystem) pair Ray Train's RunConfig takes for `storage`.

    A local path is made absolute and needs no filesystem (None). `s3://bucket/prefix` becomes
    ("bucket/prefix", S3FileSystem) with the endpoint from `endpoint_url`, else SAFELATENT_S3_ENDPOINT_URL, else
    AWS_ENDPOINT_URL (its scheme decides http or https), and the region from AWS_DEFAULT_REGION when set.
    Credentials are not part of the filesystem: every process (driver, controller, workers) reads them from
    its own environment, so they never travel with the pickled filesystem.
    """
    if not str(storage).startswith("s3://"):
        return str(Path(storage).expanduser().resolve()), None
    bucket, key = s3_storage.parse_s3_uri(storage)
    endpoint = endpoint_url or os.environ.get(s3_storage.ENDPOINT_ENV_VAR) or os.environ.get("AWS_ENDPOINT_URL")
    options: dict[str, Any] = {}
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        options["endpoint_override"] = parsed.netloc + parsed.path.rstrip("/")
        options["scheme"] = parsed.scheme
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    if region:
        options["region"] = region
    return f"{bucket}/{key.strip('/')}".rstrip("/"), pyarrow.fs.S3FileSystem(**options)


def run_training(loop: Callable[[dict], Any], loop_config: dict, *, name: str, settings: TrainSettings,
                 storage: str, resume: bool, local_dir: str | os.PathLike | None = None) -> TrainOutcome:
    """Run `loop(loop_config)` on `settings.workers` Ray Train workers and return what it left behind.

    The run is `<storage>/<name>`: with `resume` it continues from the latest checkpoint there (the loop sees it
    through `restore`), or starts fresh when there is none; without `resume` an existing run of that name is
    an error rather than a silent continuation. A demand the cluster can never meet fails before anything
    starts. A remote checkpoint is downloaded into `local_dir` (default: a new temporary directory).
    Needs a Ray connection (see `cluster.connect.connected`).
    """
    _require_train_v2()
    if not _NAME.match(name):
        raise ConfigError(f"run name {name!r} must start with a letter or digit and use only letters, digits, "
                          "'.', '_' and '-'")
    if not ray.is_initialized():
        raise SafelatentError("run_training needs a Ray connection; call it inside cluster.connect.connected()")
    path, filesystem = storage_filesystem(storage, settings.s3_endpoint_url)
    run_path = _join(storage if _is_s3(storage) else path, name)
    resumed = _has_snapshot(path, filesystem, name)
    if resumed and not resume:
        raise ConfigError(f"a run named {name!r} already exists at {run_path} (it has checkpoints). Pass --resume "
                          "(resume=True) to continue it from its latest checkpoint, choose another name, or delete "
                          f"{run_path} to start over")
    use_gpu = _use_gpu(settings.use_gpu, ray.cluster_resources())
    per_worker = {"CPU": settings.cpus_per_worker, **({"GPU": 1.0} if use_gpu else {})}
    check_workers_fit(settings.workers, per_worker)
    trainer = _Trainer(
        loop, train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=settings.workers, use_gpu=use_gpu,
                                               resources_per_worker={"CPU": settings.cpus_per_worker}),
        run_config=_run_config(name, path, filesystem, settings))
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as error:
        raise SafelatentError(f"training run {name!r} ({run_path}) failed (train.max_failures="
                              f"{settings.max_failures}): {failure_message(error)}") from None
    checkpoint = _local_checkpoint(result.checkpoint, local_dir, name)
    return TrainOutcome(metrics=dict(result.metrics or {}), checkpoint=checkpoint, run_path=run_path,
                        return_value=result.return_value, resumed=resumed)


def check_workers_fit(workers: int, per_worker: dict[str, float],
                      nodes: list[dict[str, float]] | None = None) -> None:
    """Raise ResourceDemandError when the cluster can never hold `workers` workers of `per_worker` each.

    Two conditions, both against the cluster's total (not free) resources: the sum over workers fits the
    cluster, and one worker fits on some node (a worker cannot span nodes). `nodes` defaults to the alive
    nodes' resources.
    """
    if nodes is None:
        nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    cluster: dict[str, float] = {}
    for node in nodes:
        for resource, amount in node.items():
            cluster[resource] = cluster.get(resource, 0.0) + amount
    demand = {resource: workers * amount for resource, amount in per_worker.items() if amount}
    short = {resource: amount for resource, amount in demand.items() if amount > cluster.get(resource, 0.0) + 1e-9}
    worker = f"{workers} worker(s) x {{{describe(per_worker)}}}"
    if short:
        missing = ", ".join(f"{resource} {amount:g} (cluster has {cluster.get(resource, 0.0):g})"
                            for resource, amount in sorted(short.items()))
        raise ResourceDemandError(f"the training run needs more than the cluster has: {missing}, for {worker}. "
                                  "Lower train.workers or train.cpus_per_worker (or set train.use_gpu), or add "
                                  "nodes")
    if not any(_fits(per_worker, node) for node in nodes):
        largest = max(nodes, key=lambda node: node.get("CPU", 0.0), default={})
        raise ResourceDemandError(f"no node can hold one worker of {{{describe(per_worker)}}} (largest node: "
                                  f"{describe(_cpu_gpu(largest))}); lower train.cpus_per_worker or add larger nodes")


def failure_message(error: BaseException) -> str:
    """The workers' own error messages from a Train V2 failure, one line per rank, without Ray's wrapping."""
    failures = getattr(error, "worker_failures", None)
    if failures:
        return "; ".join(f"rank {rank}: {_last_line(exception)}" for rank, exception in sorted(failures.items()))
    cause = getattr(error, "controller_failure", None)
    return _last_line(cause if cause is not None else error)


class _Trainer(ray.train.torch.TorchTrainer):
    """TorchTrainer without Train V2's PlacementGroupCleaner.

    That detached actor asks the State API whether the controller is alive, finding the cluster by auto-detection;
    with more than one Ray cluster on a host (two local runs side by side, a test cluster next to another) it
    can ask the wrong one, take "not found" for dead and remove the live run's placement group, which kills its
    workers ("Destroying worker since its placement group was removed"). Without it, a controller that dies while
    its driver lives leaves the workers' placement group until the driver exits, when Ray removes it anyway.
    Should Ray rename the hook or the callback, this filter does nothing and Ray's default applies.
    """

    def _create_default_callbacks(self):
        callbacks = super()._create_default_callbacks()
        return [callback for callback in callbacks if type(callback).__name__ != "PlacementGroupCleanerCallback"]


def _require_train_v2() -> None:
    from ray.train.v2._internal.constants import V2_ENABLED_ENV_VAR, is_v2_enabled

    if not is_v2_enabled():
        raise ConfigError(f"this runner uses the Ray Train V2 API, but {V2_ENABLED_ENV_VAR}=0 in the environment; "
                          "unset it")


def _run_config(name: str, path: str, filesystem: pyarrow.fs.FileSystem | None,
                settings: TrainSettings) -> ray.train.RunConfig:
    # controller_failure_limit bounds Train V2's retries of a worker group that could not start (each waits
    # RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S, 60 s by default); its default, -1, retries forever, so a cluster
    # that is busy for good would hang the run.
    return ray.train.RunConfig(
        name=name, storage_path=path, storage_filesystem=filesystem,
        failure_config=ray.train.FailureConfig(max_failures=settings.max_failures,
                                               controller_failure_limit=settings.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=settings.keep_checkpoints),
        worker_runtime_env=runtime_env() or {})


def _has_snapshot(path: str, filesystem: pyarrow.fs.FileSystem | None, name: str) -> bool:
    """Whether `<path>/<name>` holds Train V2's checkpoint list, i.e. a run with that name would resume."""
    fs = filesystem or pyarrow.fs.LocalFileSystem()
    try:
        info = fs.get_file_info(f"{path}/{name}/{SNAPSHOT_FILE}")
    except OSError as error:  # no credentials, an unreachable endpoint, a bucket we may not read
        raise SafelatentError(f"cannot read the training storage {path} ({fs.type_name}): {error}. Check the "
                              "endpoint, the bucket and the AWS_* credentials in the environment") from None
    return info.type != pyarrow.fs.FileType.NotFound


def _local_checkpoint(checkpoint: ray.train.Checkpoint | None, local_dir: str | os.PathLike | None,
                      name: str) -> Path | None:
    """The checkpoint as a local directory: its own path when storage is local, else a downloaded copy."""
    if checkpoint is None:
        return None
    if checkpoint.filesystem.type_name == "local":
        return Path(checkpoint.path)
    base = Path(local_dir) if local_dir is not None else Path(tempfile.mkdtemp(prefix=f"safelatent-{name}-"))
    target = base / Path(checkpoint.path).name
    checkpoint.to_directory(str(target))
    return target


def _use_gpu(use_gpu: bool | str, cluster: dict[str, float]) -> bool:
    return cluster.get("GPU", 0.0) > 0 if use_gpu == "auto" else bool(use_gpu)


def _fits(bundle: dict[str, float], node: dict[str, float]) -> bool:
    return all(amount <= node.get(resource, 0.0) + 1e-9 for resource, amount in bundle.items() if amount)


def _cpu_gpu(resources: dict[str, float]) -> dict[str, float]:
    return {resource: amount for resource, amount in resources.items() if resource in ("CPU", "GPU")}


def _is_s3(storage: str) -> bool:
    return str(storage).startswith("s3://")


def _join(base: str, name: str) -> str:
    return f"{str(base).rstrip('/')}/{name}"


def _last_line(error: BaseException) -> str:
    """`Type: message` of an error, the message cut to its last non-empty line (Ray puts tracebacks first)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    name = type(error).__name__
    if not lines:
        return name
    return lines[-1] if lines[-1].startswith(name) else f"{name}: {lines[-1]}"


# ----------------------------------------------------------------------------------------------------------------
# Worker side: call these inside the training loop
# ----------------------------------------------------------------------------------------------------------------


def worker_rank() -> int:
    """This worker's rank among all workers (0 .. world_size() - 1)."""
    return ray.train.get_context().get_world_rank()


def world_size() -> int:
    """How many workers run the loop."""
    return ray.train.get_context().get_world_size()


def device():
    """The torch device of this worker (its GPU, or the CPU)."""
    return ray.train.torch.get_device()


def restore(load_fn: Callable[[Path], T]) -> T | None:
    """`load_fn(directory)` of the latest checkpoint of this run, or None when there is none.

    Every rank gets the same checkpoint: the one reported last before a worker-group restart, or the latest of
    an earlier run of the same name that is being resumed. A remote checkpoint is downloaded to a local
    directory that only exists while `load_fn` runs, so load everything it needs there.
    """
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        return load_fn(Path(directory))


def report(metrics: dict[str, Any], save_fn: Callable[[Path], None] | None = None) -> None:
    """Report this step's metrics from every rank and, with `save_fn`, a checkpoint written by rank 0.

    Every rank must call it the same number of times (it is a barrier). Rank 0 calls `save_fn(directory)` to
    write the checkpoint files into a fresh temporary directory, which Ray Train copies to the run's storage
    before this returns; the other ranks write nothing (with DDP their weights equal rank 0's). Train V2 keeps
    rank 0's metrics with the checkpoint. Scalar tensors in `metrics` are turned into numbers.
    """
    plain = {key: _plain(value) for key, value in metrics.items()}
    if save_fn is None or worker_rank() != 0:
        ray.train.report(plain, checkpoint=None)
        return
    with tempfile.TemporaryDirectory(prefix="safelatent-checkpoint-") as directory:
        save_fn(Path(directory))
        ray.train.report(plain, checkpoint=ray.train.Checkpoint.from_directory(directory))


def _plain(value: Any) -> Any:
    """A tensor metric as a Python number (Ray refuses tensors in metrics); anything else unchanged."""
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", None) == 0:
        with suppress(Exception):
            return item()
    return value
