"""Checks of hook and command arguments at the edge: each raises
:class:`~rlix_plugin.hookspecs.InvalidRequestError` naming the argument and the value, and none
changes anything. Pure; the hook layer, the scheduler and the CLI share them."""

from __future__ import annotations

import math
import re

from rlix_plugin.hookspecs import CLUSTER_NAMES, InvalidRequestError

#: The same rule the scheduler's topology applies to pipeline ids (no whitespace, no newline).
PIPELINE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
#: Longest wait any call may ask for: a week. Longer is a mistake (and overflows the event loop).
MAX_TIMEOUT_S = 7 * 24 * 3600.0


def pipeline_id(value: object, name: str = "pipeline_id") -> str:
    if not isinstance(value, str) or not PIPELINE_ID.fullmatch(value):
        raise InvalidRequestError(
            f"{name} must be 1-128 letters, digits or '_.-', starting with a letter or digit, got {value!r}"
        )
    return value


def integer(value: object, name: str, minimum: int, maximum: int | None = None) -> int:
    """An int (not a bool, not a float, not a string) in ``[minimum, maximum]``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        bound = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise InvalidRequestError(f"{name} must be an int {bound}, got {value!r}")
    return value


def optional_integer(value: object, name: str, minimum: int) -> int | None:
    return None if value is None else integer(value, name, minimum)


def timeout(value: object, name: str = "timeout_s") -> float:
    """A finite number of seconds in (0, one week]."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not value > 0
        or math.isinf(value)
        or value > MAX_TIMEOUT_S
    ):
        raise InvalidRequestError(f"{name} must be a finite number > 0 and <= {MAX_TIMEOUT_S:.0f}, got {value!r}")
    return float(value)


def cluster(value: object, name: str = "cluster") -> str:
    if not isinstance(value, str) or value not in CLUSTER_NAMES:
        raise InvalidRequestError(f"{name} must be one of {list(CLUSTER_NAMES)}, got {value!r}")
    return value


def text(value: object, name: str, limit: int = 4096) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise InvalidRequestError(f"{name} must be a string of at most {limit} characters, got {value!r:.80}")
    return value


def optional_text(value: object, name: str, limit: int = 256) -> str | None:
    return None if value is None else text(value, name, limit)


__all__ = [
    "MAX_TIMEOUT_S",
    "PIPELINE_ID",
    "cluster",
    "integer",
    "optional_integer",
    "optional_text",
    "pipeline_id",
    "text",
    "timeout",
]
