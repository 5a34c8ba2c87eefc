"""Leases: who may act for a pipeline. Pure (the standard library's ``secrets`` only).

Registering a pipeline issues its lease, an unguessable token; every call that changes what the
pipeline holds or wants presents it. Only the lease's digest is kept (and persisted, see
:mod:`.persist`): a restarted scheduler can check a lease but never learns one, and neither does
anyone who can read the store. A wrong or missing lease is refused with
:class:`NotPipelineOwnerError` naming the pipeline, before anything changes. Operator actions
(removing a pipeline that is not yours, replacing or draining the scheduler) present the operator
credential the scheduler was started with; a scheduler started without one refuses them.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from rlix_plugin.hookspecs import NotPipelineOwnerError


class Leases:
    """The lease of every registered pipeline, and the operator credential."""

    def __init__(self, operator_credential: str | None = None, *, digest: str | None = None) -> None:
        """:param operator_credential: the credential itself, or ``digest`` its digest (what a
        remote scheduler is given, so the credential never travels as an argument)."""
        #: pipeline -> digest of its lease.
        self._leases: dict[str, str] = {}
        self._operator = digest or (operator_digest(operator_credential) if operator_credential else None)

    def issue(self, pipeline_id: str) -> str:
        """A new lease for ``pipeline_id`` (replacing any earlier one)."""
        lease = secrets.token_urlsafe(24)
        self._leases[pipeline_id] = lease_digest(lease)
        return lease

    def digests(self) -> dict[str, str]:
        """pipeline -> digest of its lease, what a restarted scheduler needs to check them."""
        return dict(self._leases)

    def restore(self, digests: dict[str, str]) -> None:
        """Check leases against persisted ``digests`` (after a restart)."""
        self._leases.update(digests)

    def drop(self, pipeline_id: str) -> None:
        self._leases.pop(pipeline_id, None)

    def holds(self, pipeline_id: str, lease: object) -> bool:
        expected = self._leases.get(pipeline_id)
        return expected is not None and isinstance(lease, str) and hmac.compare_digest(expected, lease_digest(lease))

    def check(self, pipeline_id: str, lease: object) -> None:
        """:raises NotPipelineOwnerError: ``lease`` is not the pipeline's."""
        if not self.holds(pipeline_id, lease):
            raise NotPipelineOwnerError(
                f"pipeline {pipeline_id!r}: the caller does not hold its lease; only the process that "
                "registered it (or one it handed the lease to) may act for it"
            )

    def check_operator(self, credential: object, action: str) -> None:
        """:raises NotPipelineOwnerError: ``credential`` is not the operator credential."""
        if self._operator is None:
            raise NotPipelineOwnerError(
                f"{action} is an operator action, and this scheduler was started without an operator "
                "credential (set RLIX_OPERATOR_TOKEN before the first connect)"
            )
        if not isinstance(credential, str) or not hmac.compare_digest(self._operator, operator_digest(credential)):
            raise NotPipelineOwnerError(f"{action} is an operator action: the operator credential is wrong or missing")

    @property
    def has_operator(self) -> bool:
        return self._operator is not None


def lease_digest(lease: str) -> str:
    """What a scheduler keeps of a lease (or of any other token it only checks)."""
    return hashlib.sha256(b"rlix-lease\0" + lease.encode("utf-8", "surrogatepass")).hexdigest()


def operator_digest(credential: str) -> str:
    """What a scheduler keeps of the operator credential."""
    return hashlib.sha256(credential.encode()).hexdigest()


__all__ = ["Leases", "lease_digest", "operator_digest"]
