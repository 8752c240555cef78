"""Calling actors that may die: Ray restarts them (max_restarts), and the caller repeats the call."""

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import ray

T = TypeVar("T")
log = logging.getLogger("safelatent.actors")

ACTOR_FAILURES = (ray.exceptions.RayActorError,)
RESTART_PATIENCE_S = 300.0


def with_retries(call: Callable[[], T], what: str, attempts: int, on_failure: Callable[[], None] | None = None,
                 retry_on: tuple[type[BaseException], ...] = ACTOR_FAILURES,
                 patience_s: float = RESTART_PATIENCE_S) -> T:
    """Run `call` (which submits and waits) until it succeeds.

    A failure in `retry_on` (the actor died, say) counts against `attempts`; while Ray restarts the actor
    (ActorUnavailableError) the caller waits up to `patience_s` without counting. Before each new try,
    `on_failure` restores what a restarted actor lost (its weights, say).
    """
    deadline = time.monotonic() + patience_s
    failures = 0
    recovering = False
    while True:
        try:
            if recovering and on_failure is not None:
                on_failure()
            return call()
        except ray.exceptions.ActorUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)
        except retry_on as error:
            failures += 1
            if failures >= attempts:
                raise
            log.warning("%s failed (%s: %s); retrying (%d/%d)", what, type(error).__name__,
                        str(error).splitlines()[0][:200], failures, attempts - 1)
            time.sleep(min(0.5 * failures, 2.0))
        recovering = True
