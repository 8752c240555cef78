"""One config for a served model: where it comes from, batching, limits, access and guardrails.

It is the `args` block of a Ray Serve config file (pipelines/configs/serve.yaml), so `safelatent serve`,
`serve run`, `serve deploy` and a RayService's serveConfigV2 all read the same settings.
"""

import re
from pathlib import PurePosixPath
from typing import Literal

from pydantic import Field, model_validator

from safelatent.config import Config
from safelatent.models.loading import DeviceName, DTypeName
from safelatent.serving.access import APIKeySettings, RateLimitSettings
from safelatent.serving.guardrails import GuardrailSettings

REGISTRY_URI = re.compile(
    r"^models:/(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>\d+))$")


class BatchingSettings(Config):
    """Dynamic batching of concurrent requests (Ray Serve's serve.batch) on each model replica, and of the harm
    judge's calls on the guardrail."""

    enabled: bool = Field(True, description="false: batches of one request (two in flight per replica).")
    max_batch_size: int = Field(32, ge=1, le=1024)
    batch_wait_timeout_s: float = Field(0.05, ge=0, le=10, description="How long a batch waits to fill up.")
    guardrail_wait_timeout_s: float = Field(0.005, ge=0, le=10, description="How long the ingress gathers "
                                                                             "guardrail checks into one call "
                                                                             "(each request makes two).")


class LimitSettings(Config):
    """Bounds on what one request may ask for."""

    max_request_bytes: int = Field(64 * 1024, ge=256, description="Larger bodies answer 413.")
    max_tokens: int = Field(256, ge=1, description="Largest max_tokens a request may ask for (else 400).")
    default_max_tokens: int = Field(64, ge=1, description="max_tokens when a request gives none.")

    @model_validator(mode="after")
    def _default_within_limit(self) -> "LimitSettings":
        if self.default_max_tokens > self.max_tokens:
            raise ValueError(f"default_max_tokens ({self.default_max_tokens}) exceeds max_tokens ({self.max_tokens})")
        return self


class ServeConfig(Config):
    """A model behind the OpenAI-compatible API."""

    model: str = Field(description="Local directory, s3://bucket/prefix/, hub id, or MLflow models:/NAME@ALIAS "
                                   "or models:/NAME/VERSION.")
    model_name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$",
                                   description="The id clients send as `model`; default: the model's folder name "
                                               "(its parent's when the folder is called model).")
    dtype: DTypeName = "auto"
    device: DeviceName = "auto"
    tracking_uri: str = Field("sqlite:///runs/mlflow.db", description="MLflow registry for models:/ sources.")
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint for s3:// sources; default: "
                                                          "SAFELATENT_S3_ENDPOINT_URL or boto3's.")
    replicas: int = Field(1, ge=1, description="Model server replicas.")
    model_cpus: float = Field(1.0, ge=0, description="CPUs reserved per model replica.")
    model_gpus: float = Field(0.0, ge=0, description="GPUs per model replica (fractions share a GPU).")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Replica log level; INFO "
                                                                                        "includes access logs.")
    torch_threads: int = Field(0, ge=0, description="torch CPU threads per model replica; 0: torch's default.")
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    api_keys: APIKeySettings = Field(default_factory=APIKeySettings)
    rate_limit: RateLimitSettings = Field(default_factory=RateLimitSettings)
    guardrails: GuardrailSettings = Field(default_factory=GuardrailSettings)

    @model_validator(mode="after")
    def _model_source(self) -> "ServeConfig":
        if self.model.startswith("models:/") and not REGISTRY_URI.match(self.model):
            raise ValueError(f"model {self.model!r}: write a registry model as models:/NAME@ALIAS or "
                             "models:/NAME/VERSION")
        return self

    def served_name(self) -> str:
        if self.model_name:
            return self.model_name
        match = REGISTRY_URI.match(self.model)
        if match:
            return match["name"]
        path = PurePosixPath(self.model.rstrip("/"))
        if path.name == "model" and path.parent.name:  # <run>/model, as the training pipelines write it
            return path.parent.name
        return path.name or self.model
