"""Waiting on an rlix actor call from a pipeline process: timeouts and errors made plain.

Every blocking call to the scheduler goes through :func:`wait`, which

* bounds the wait (the caller's timeout plus a grace for the round trip), so nothing hangs;
* turns an rlix error raised inside the actor back into that error, diagnostic included, instead
  of Ray's wrapper;
* turns a dead or unreachable actor into :class:`SchedulerUnavailableError` naming the actor and
  what the caller was doing. Ray reports an actor's death to every pending call within
  milliseconds, so a blocked caller learns of it at once, not at its timeout.
"""

from __future__ import annotations

import logging
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

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
            f"{what}: the {actor} actor is gone or unreachable ({type(exc).__name__}: {_first_line(exc)}); "
            "its in-memory state is lost, so the pipeline must stop and be started again"
        ) from None
    except RayTaskError as exc:
        inner = unwrap(exc)
        if inner is not exc:
            raise inner from None
        raise


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else repr(exc)


__all__ = ["GRACE_S", "cancel_quietly", "unwrap", "wait"]
