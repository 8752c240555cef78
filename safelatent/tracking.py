"""MLflow tracking with an explicit tracking URI (SQLite locally, an HTTP server in a cluster).

A `Tracker` is one MLflow run: flattened config params, per-step metrics, tags (provenance, lineage) and
artifacts. A resumed training run reopens the same MLflow run by id, so its metrics continue one history.
Nothing here touches MLflow's global state (no mlflow.set_tracking_uri), so several runs can coexist.
"""

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from pydantic import Field, field_validator

from safelatent.config import Config

_MAX_PARAM_LENGTH = 6000


class TrackingSettings(Config):
    """Where runs are tracked."""

    uri: str = Field("sqlite:///runs/mlflow.db", description="MLflow tracking URI: sqlite:///PATH, http(s)://HOST.")
    experiment: str = Field("safelatent", min_length=1)
    artifact_root: str | None = Field(None, description="Artifact location for a new experiment; default: "
                                                        "mlartifacts/ beside a SQLite database.")
    registered_model: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                                         description="Register the trained model under this name in the MLflow "
                                                     "model registry (a new version per run); null: no.")
    parent_run_id: str | None = Field(None, description="Nest the run under this MLflow run (a sweep sets it for "
                                                        "its trials).")

    @field_validator("uri")
    @classmethod
    def _not_a_file_store(cls, uri: str) -> str:
        scheme = urlparse(uri).scheme
        if scheme in ("", "file"):
            raise ValueError(f"tracking URI {uri!r} is a file store; use sqlite:///PATH (or an http(s) server)")
        return uri

    def for_another_process(self) -> "TrackingSettings":
        """The same settings with a SQLite path made absolute, for a process that runs in another directory (a Ray
        Train worker)."""
        if not self.uri.startswith("sqlite:///"):
            return self
        return self.model_copy(update={"uri": "sqlite:///" + str(Path(self.uri[len("sqlite:///"):]).resolve())})


def default_artifact_root(uri: str) -> str | None:
    if uri.startswith("sqlite:///"):
        database = Path(uri[len("sqlite:///"):])
        return (database.parent.resolve() / "mlartifacts").as_uri()
    return None


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


class Tracker:
    """One MLflow run; create with `start` (new or resumed by id)."""

    def __init__(self, client: MlflowClient, run_id: str, uri: str):
        self.client = client
        self.run_id = run_id
        self.uri = uri

    @classmethod
    def start(cls, settings: TrackingSettings, run_name: str, tags: Mapping[str, str] | None = None,
              run_id: str | None = None) -> "Tracker":
        if settings.uri.startswith("sqlite:///"):
            Path(settings.uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        client = MlflowClient(tracking_uri=settings.uri)
        if run_id is not None:
            client.update_run(run_id, status="RUNNING")
            return cls(client, run_id, settings.uri)
        experiment = client.get_experiment_by_name(settings.experiment)
        experiment_id = experiment.experiment_id if experiment is not None else client.create_experiment(
            settings.experiment, artifact_location=settings.artifact_root or default_artifact_root(settings.uri))
        tags = dict(tags or {})
        if settings.parent_run_id:
            tags["mlflow.parentRunId"] = settings.parent_run_id
        run = client.create_run(experiment_id, run_name=run_name, tags=tags)
        return cls(client, run.info.run_id, settings.uri)

    def log_params(self, params: Mapping[str, Any]) -> None:
        entries = [Param(key, str(value)[:_MAX_PARAM_LENGTH]) for key, value in flatten(params).items()]
        for start in range(0, len(entries), 100):
            self.client.log_batch(self.run_id, params=entries[start:start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        entries = [Metric(key, float(value), now, step) for key, value in metrics.items()
                   if isinstance(value, (int, float)) and not math.isnan(float(value))]
        for start in range(0, len(entries), 500):
            self.client.log_batch(self.run_id, metrics=entries[start:start + 500])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        entries = [RunTag(key, str(value)) for key, value in flatten(tags).items()]
        if entries:
            self.client.log_batch(self.run_id, tags=entries)

    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def log_artifact(self, local_file: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(local_file), artifact_path)

    def register_model(self, name: str, artifact_path: str, description: str = "") -> int:
        """A new version of registered model `name` pointing at this run's `artifact_path`; its version number."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name)
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        run = self.client.get_run(self.run_id)
        source = f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"
        version = self.client.create_model_version(name, source, run_id=self.run_id, description=description)
        return int(version.version)

    def promote(self, name: str, version: int, alias: str | None, tags: Mapping[str, Any]) -> None:
        """Tag a registered model version (its lineage) and, when `alias` is given, point the alias at it."""
        for key, value in flatten(tags).items():
            self.client.set_model_version_tag(name, str(version), key, str(value))
        if alias:
            self.client.set_registered_model_alias(name, alias, str(version))

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)

    def url(self) -> str:
        return f"{self.uri} run {self.run_id}"
