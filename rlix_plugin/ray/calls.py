"""Waiting on an rlix actor call from a pipeline process: timeouts and errors made plain.

Every blocking call to the scheduler goes through :func:`wait`, which

* bounds the wait (the caller's timeout plus a grace for the round trip), so nothing hangs;
* turns an rlix error raised inside the actor back into that error, diagnostic included, instead
  of Ray's wrapper;
* turns a dead or unreachable actor into :class:`SchedulerUnavailableError` naming the actor and
  what the caller was doing. Ray reports an actor's death to every pending call within
  milliseconds, so a blocked caller learns of it at once, not at its timeout.

:func:`call_through_restarts` is the scheduler's variant: the scheduler actor restarts when it
dies, so a call that fails because the actor is unavailable (a call in flight when it died) is
made again -- with the same arguments, idempotency key included, and the time left -- until it is
answered or its time is up. Only an actor that is gone for good (killed without restart, shut
down by an operator) ends the call with :class:`SchedulerUnavailableError`, at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import ActorDiedError, GetTimeoutError, RayActorError, RayTaskError

from rlix_plugin.hookspecs import RlixError, SchedulerTimeoutError, SchedulerUnavailableError

log = logging.getLogger(__name__)

#: Seconds a caller waits beyond the actor-side timeout before concluding that the actor itself
#: is stuck (rather than busy GPUs): the round trip plus scheduling noise on a loaded node.
GRACE_S = 5.0


def unwrap(exc: BaseException) -> BaseException:
    """The rlix error inside a Ray task error, or ``exc`` itself."""
    cause = getattr(exc, "cause", None)
    if isinstance(exc, RayTaskError) and isinstance(cause, RlixError):
        return cause
    return exc


def cancel_quietly(ref: Any) -> None:
    """Best-effort cancel of an actor call whose answer nobody waits for any more."""
    try:
        ray.cancel(ref)
    except Exception:  # the call may have finished, or the actor be gone: nothing to undo
        pass


def wait(ref: Any, timeout_s: float, what: str, actor: str) -> Any:
    """``ray.get(ref)`` within ``timeout_s`` seconds, with rlix errors.

    :param what: What the caller was doing, for the messages (``"request_gpus(p1_actor_train)"``).
    :param actor: The actor's name, for the messages.
    :raises SchedulerUnavailableError: the actor died or cannot be reached.
    :raises SchedulerTimeoutError: no answer within ``timeout_s``.
    :raises RlixError: whatever the actor raised (``InvalidRequestError``, ...).
    """
    try:
        return ray.get(ref, timeout=timeout_s)
    except GetTimeoutError:
        cancel_quietly(ref)
        raise SchedulerTimeoutError(f"{what}: no answer from {actor} within {timeout_s:.1f}s") from None
    except RayActorError as exc:
        raise SchedulerUnavailableError(
            f"{what}: the {actor} actor is gone or unreachable ({type(exc).__name__}: {_first_line(exc)})"
        ) from None
    except RayTaskError as exc:
        inner = unwrap(exc)
        if inner is not exc:
            raise inner from None
        raise


#: Pauses between attempts of a call interrupted by a restart (the last one repeats). A retried
#: call to a restarting actor waits in Ray's queue until it is up again, so these only pace calls
#: that fail at once.
RETRY_PAUSES_S = (0.01, 0.02, 0.05, 0.1, 0.2)


#: How often a waiting call checks whether its actor restarted meanwhile (see ``restarts``).
RESTART_CHECK_S = 0.05


def call_through_restarts(
    submit: Callable[[float], Any],
    timeout_s: float,
    what: str,
    actor: str,
    gone: Callable[[], bool],
    restarts: Callable[[], int] | None = None,
) -> Any:
    """Make an actor call, and make it again when a restart of the actor interrupted it.

    :param submit: ``submit(left_s) -> ObjectRef``: makes the call, given the seconds left.
    :param timeout_s: Bound on the whole call, retries included.
    :param gone: True when the actor is gone for good (its name no longer resolves).
    :param restarts: How many restarts of the actor the caller knows of. When it grows while a
        call waits, the call is made again at once: Ray fails a call that was in flight when the
        actor died only once it is sure of the death (about a second), and the restarted actor
        is usually serving before that.
    :raises SchedulerUnavailableError: the actor is gone for good, or did not come back in time.
    :raises SchedulerTimeoutError: no answer within ``timeout_s``.
    :raises RlixError: whatever the actor raised.
    """
    deadline = time.monotonic() + timeout_s
    attempt = 0
    while True:
        left = deadline - time.monotonic()
        known = restarts() if restarts is not None else 0
        ref = submit(left)
        try:
            if restarts is not None and not _answered_before_a_restart(ref, deadline, restarts, known):
                attempt = max(attempt, 1)
                continue  # the actor restarted under the call: make it again now
            return ray.get(ref, timeout=max(0.001, deadline - time.monotonic()))
        except GetTimeoutError:
            cancel_quietly(ref)
            raise SchedulerTimeoutError(f"{what}: no answer from {actor} within {timeout_s:.1f}s") from None
        except RayTaskError as exc:
            inner = unwrap(exc)
            if inner is not exc:
                raise inner from None
            raise
        except RayActorError as exc:
            if isinstance(exc, ActorDiedError) and gone():
                raise SchedulerUnavailableError(
                    f"{what}: the {actor} actor is gone for good (killed without restart, or shut down by an "
                    f"operator): {_first_line(exc)}"
                ) from None
            left = deadline - time.monotonic()
            if left <= 0:
                raise SchedulerUnavailableError(
                    f"{what}: the {actor} actor is gone and did not come back within {timeout_s:.1f}s "
                    f"({type(exc).__name__}: {_first_line(exc)})"
                ) from None
        if attempt == 0:
            log.info("%s: the %s actor restarted under the call; calling it again", what, actor)
        time.sleep(min(left, RETRY_PAUSES_S[min(attempt, len(RETRY_PAUSES_S) - 1)]))
        attempt += 1


def _answered_before_a_restart(ref: Any, deadline: float, restarts: Callable[[], int], known: int) -> bool:
    """Wait for ``ref`` until ``deadline``; False as soon as ``restarts()`` exceeds ``known``
    (the call is then abandoned: the actor that had it is dead)."""
    while True:
        left = deadline - time.monotonic()
        ready, _ = ray.wait([ref], timeout=max(0.0, min(left, RESTART_CHECK_S)))
        if ready or left <= 0:
            return True
        if restarts() > known:
            return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else repr(exc)


__all__ = ["GRACE_S", "RESTART_CHECK_S", "RETRY_PAUSES_S", "call_through_restarts", "cancel_quietly", "unwrap", "wait"]
