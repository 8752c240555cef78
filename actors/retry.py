"""Calling actors that may die: Ray restarts them (max_restarts), and the caller repeats the call."""

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import ray

T = TypeVar("T")
log = logging.getLogger("safelatent.actors")

ACTOR_FAILURES = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)


def with_retries(call: Callable[[], T], what: str, attempts: int, on_failure: Callable[[], None] | None = None,
                 retry_on: tuple[type[BaseException], ...] = ACTOR_FAILURES) -> T:
    """Run `call` (which submits and waits); on an actor failure run `on_failure` (e.g. reload weights) and retry."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except retry_on as error:
            if attempt == attempts:
                raise
            log.warning("%s failed (%s: %s); retrying (%d/%d)", what, type(error).__name__,
                        str(error).splitlines()[0][:200], attempt, attempts - 1)
            time.sleep(min(0.5 * attempt, 2.0))
            if on_failure is not None:
                on_failure()
    raise AssertionError("unreachable")
