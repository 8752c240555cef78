"""Secrets come from the environment only, and are scrubbed from anything the project prints or logs."""

import logging
import os

from pydantic import SecretStr

# Variables whose values must never appear in output. Others can be registered with `register_secret_env`.
SECRET_ENV_VARS: set[str] = {
    "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "OPENAI_API_KEY", "HF_TOKEN", "RAY_AUTH_TOKEN",
    "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "SAFELATENT_API_KEYS",
}

REDACTED = "***"


def register_secret_env(name: str) -> None:
    """Treat one more environment variable as secret."""
    SECRET_ENV_VARS.add(name)


def env_secret(name: str, *, required: bool = False) -> SecretStr | None:
    """Read a secret from the environment, wrapped so that printing it shows '**********'."""
    register_secret_env(name)
    value = os.environ.get(name)
    if not value:
        if required:
            raise KeyError(f"environment variable {name} is not set; secrets are read from the environment only")
        return None
    return SecretStr(value)


def redact(text: str) -> str:
    """Replace the value of every secret environment variable found in `text`."""
    for name in SECRET_ENV_VARS:
        for value in _values(name):
            text = text.replace(value, REDACTED)
    return text


def _values(name: str) -> list[str]:
    value = os.environ.get(name, "")
    # Some variables hold a comma-separated list of keys; each one is a secret on its own.
    parts = [part.strip() for part in value.split(",")] if "," in value else [value]
    return sorted((part for part in parts if len(part) >= 4), key=len, reverse=True)


class RedactingFilter(logging.Filter):
    """A logging filter that scrubs secret values from every record's message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
