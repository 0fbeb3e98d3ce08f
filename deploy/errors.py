"""What can go wrong in a deploy: :mod:`core.errors` types with deploy's own names.

The CLI prints the message and exits non-zero; the admin API renders them like every
other :class:`~core.errors.ApiError`. A refused promotion (409) carries the gate report
inside its error JSON (``failed_gates``, ``gates``).
"""

from __future__ import annotations

from core.errors import ApiError, Conflict, NotFound, ServiceUnavailable

DeployError = ApiError


class UnknownVersion(NotFound):
    """No such version in the registry, or not a policy."""


class GateError(Conflict):
    """The gates cannot run at all: no reward model, nothing to compare with …"""


class GatesFailed(Conflict):
    """The candidate failed one or more gates; ``report`` says which and why."""

    def __init__(self, report):  # a gates.GateReport
        super().__init__(f"{report.version} failed the gates: " + "; ".join(report.reasons),
                         failed_gates=report.failed, gates=report.model_dump(mode="json"))
        self.report = report


class NotPromotable(Conflict):
    """The version exists but cannot go live: files differ from its manifest, no target …"""


class BrokerDown(ServiceUnavailable):
    """The promote/rollback event could not be published; the live pointer was restored."""
