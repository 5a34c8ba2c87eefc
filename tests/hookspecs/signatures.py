"""How a hook's documented signature is written (shared by the meta-tests and docs/hooks.md)."""

from __future__ import annotations

import inspect


def signature_line(spec: object) -> str:
    """``rlix_x(*, a: int, b: str) -> None``: keyword-only, annotations as written in the spec."""
    sig = inspect.signature(spec)  # type: ignore[arg-type]
    params = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    return f"{spec.__name__}(*, {params}) -> {sig.return_annotation}"  # type: ignore[attr-defined]
