"""What can go wrong in a deploy, each with the HTTP status the admin API answers.

The CLI prints the message and exits non-zero; the API maps ``status`` and ``type`` onto
OpenAI's error JSON. Handlers raise these and never know which transport called them.
"""

from __future__ import annotations


class DeployError(Exception):
    """Base: ``status`` is the HTTP status, ``type`` the OpenAI-style error type."""

    status = 500
    type = "InternalServerError"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class UnknownVersion(DeployError):
    """No such version in the registry, or not a policy."""

    status = 404
    type = "NotFoundError"


class GateError(DeployError):
    """The gates cannot run at all: no reward model, nothing to compare with …"""

    status = 409
    type = "ConflictError"


class GatesFailed(DeployError):
    """The candidate failed one or more gates; ``report`` says which and why."""

    status = 409
    type = "ConflictError"

    def __init__(self, report):  # a gates.GateReport
        super().__init__(f"{report.version} failed the gates: " + "; ".join(report.reasons))
        self.report = report


class NotPromotable(DeployError):
    """The version exists but cannot go live: files differ from its manifest, no target …"""

    status = 409
    type = "ConflictError"


class BrokerDown(DeployError):
    """The promote/rollback event could not be published; the live pointer was restored."""

    status = 503
    type = "ServiceUnavailableError"
