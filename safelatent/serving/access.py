"""Who may call the server and how often: API keys (kept as SHA-256 digests) and a per-key token bucket.

Keys come from an environment variable (comma- or newline-separated) or a file with one key per line (a mounted
Kubernetes secret). Only their digests travel to the server's replicas, so plaintext keys never appear in a
deployment's arguments, its logs or the Ray dashboard. A request presents a key as `Authorization: Bearer KEY`
(what the OpenAI clients send) or `api-key: KEY`.
"""

import hashlib
import hmac
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from pydantic import Field

from safelatent.config import Config
from safelatent.errors import ConfigError


class APIKeySettings(Config):
    """Where the API keys come from."""

    required: bool = Field(True, description="Refuse requests without a valid key; false serves anyone "
                                             "(only for a server that listens on loopback).")
    env: str = Field("SAFELATENT_API_KEYS", min_length=1, description="Environment variable with the keys, "
                                                                           "comma- or newline-separated.")
    file: str | None = Field(None, description="A file with one key per line (a mounted secret).")


class RateLimitSettings(Config):
    """A token bucket per API key: `requests_per_minute` on average, bursts up to `burst`."""

    requests_per_minute: float = Field(600, gt=0)
    burst: int = Field(60, ge=1)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def read_keys(settings: APIKeySettings, environ: dict[str, str] | None = None) -> list[str]:
    """The plaintext keys from the environment variable and the file (empty entries dropped)."""
    environ = os.environ if environ is None else environ
    raw = environ.get(settings.env, "")
    if settings.file:
        path = Path(settings.file)
        if not path.is_file():
            raise ConfigError(f"api_keys.file {path} does not exist")
        raw += "\n" + path.read_text()
    return [key.strip() for key in raw.replace(",", "\n").splitlines() if key.strip()]


def key_digests(settings: APIKeySettings, environ: dict[str, str] | None = None) -> list[str]:
    """Digests of the configured keys; a config error when keys are required and none are set."""
    keys = read_keys(settings, environ)
    if settings.required and not keys:
        where = f"${settings.env}" + (f" or {settings.file}" if settings.file else "")
        raise ConfigError(f"no API keys: set {where} (e.g. export {settings.env}=$(openssl rand -hex 16)), "
                          "or set api_keys.required=false for a loopback-only server")
    return [digest(key) for key in keys]


class KeyChecker:
    """Checks a presented key against the allowed digests in constant time."""

    def __init__(self, digests: Iterable[str], required: bool = True):
        self.digests = list(digests)
        self.required = required

    def identify(self, presented: str | None) -> str | None:
        """The digest of a valid key; None when none is needed and none was given.

        Raises PermissionError("missing") without a key and PermissionError("invalid") for a wrong one.
        """
        if not presented:
            if self.required:
                raise PermissionError("missing")
            return None
        candidate = digest(presented)
        if any(hmac.compare_digest(candidate, allowed) for allowed in self.digests):
            return candidate
        if not self.required and not self.digests:
            return None
        raise PermissionError("invalid")


def presented_key(headers: dict[str, str]) -> str | None:
    """The key in `Authorization: Bearer KEY` or `api-key: KEY` (header names in lower case)."""
    authorization = headers.get("authorization", "")
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return headers.get("api-key") or None


class RateLimiter:
    """A token bucket per caller; `acquire` answers how long to wait (0 when the request may go now)."""

    def __init__(self, settings: RateLimitSettings, clock: Callable[[], float] = time.monotonic):
        self.rate = settings.requests_per_minute / 60.0
        self.burst = float(settings.burst)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # caller -> (tokens, time of last update)
        self._lock = threading.Lock()

    def acquire(self, caller: str) -> float:
        """Take one token for `caller`: 0.0 if there was one, else the seconds until one is available."""
        with self._lock:
            now = self.clock()
            tokens, then = self._buckets.get(caller, (self.burst, now))
            tokens = min(self.burst, tokens + (now - then) * self.rate)
            if tokens >= 1:
                self._buckets[caller] = (tokens - 1, now)
                return 0.0
            self._buckets[caller] = (tokens, now)
            return (1 - tokens) / self.rate
