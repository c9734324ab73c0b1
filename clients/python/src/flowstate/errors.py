"""Exceptions raised by the client, one per gRPC status that callers handle differently.

Every exception keeps the server's message (`message`), the gRPC code (`code`) and, for
INVALID_ARGUMENT, the field violations the server sent (`field_violations`: field -> reason).
"""

from __future__ import annotations

from datetime import timedelta

import grpc
from google.rpc import error_details_pb2, status_pb2


class FlowstateError(Exception):
    """Base of every error the client raises for a failed call."""

    def __init__(
        self,
        message: str,
        code: grpc.StatusCode,
        field_violations: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.field_violations = field_violations or {}
        # google.rpc.ErrorInfo metadata the server sent (e.g. where a subscription may resume).
        self.info: dict[str, str] = {}

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class InvalidArgument(FlowstateError):
    """The request was malformed or over a limit; nothing was changed."""


class NotFound(FlowstateError):
    """The session, namespace or limit does not exist (or the session expired)."""


class Conflict(FlowstateError):
    """A compare-and-set lost (ABORTED): re-read and retry."""


class Unavailable(FlowstateError):
    """The store (or the server) is unreachable; reads are safe to retry."""


class DeadlineExceeded(FlowstateError):
    """The call ran out of time."""


class ResourceExhausted(FlowstateError):
    """The server is at its concurrency limit; back off and retry."""


class Unauthenticated(FlowstateError):
    """Missing or wrong API key."""


class PermissionDenied(FlowstateError):
    """The API key may not do this."""


class LockLost(FlowstateError):
    """FAILED_PRECONDITION: the lock is not held with this token any more (it expired or was
    released). Work it guarded must stop: a newer holder has a higher fencing token."""


class LeaseLost(FlowstateError):
    """FAILED_PRECONDITION from a queue call: the job is not leased with this token any more
    (its lease ran out and it went to another worker or died, or it was already settled)."""


class LockBusy(Exception):
    """Raised by `locks.hold` when the lock was not granted within `wait`."""

    def __init__(self, name: str, retry_after: timedelta, holders: int) -> None:
        super().__init__(f"lock {name!r} is held ({holders} holder(s)); retry after {retry_after.total_seconds():.3f}s")
        self.name = name
        self.retry_after = retry_after
        self.holders = holders


class EventsExpired(InvalidArgument):
    """OUT_OF_RANGE: a subscription's position is older than its topic's history. `topic`,
    `after` and `first_id` (where the history now starts) say what was lost."""

    @property
    def topic(self) -> str:
        return self.info.get("topic", "")

    @property
    def first_id(self) -> str:
        return self.info.get("first_id", "")


class RateLimited(Exception):
    """Raised by `ratelimit.enforce` when a check denies; `retry_after` says when to retry."""

    def __init__(self, retry_after: timedelta, results: list) -> None:
        super().__init__(f"rate limited; retry after {retry_after.total_seconds():.3f}s")
        self.retry_after = retry_after
        self.results = results


_BY_CODE: dict[grpc.StatusCode, type[FlowstateError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: EventsExpired,
    grpc.StatusCode.FAILED_PRECONDITION: LockLost,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ABORTED: Conflict,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
}


def _details(trailing_metadata) -> tuple[dict[str, str], dict[str, str]]:
    """(field violations, ErrorInfo metadata) from the rich status the server sent."""
    violations: dict[str, str] = {}
    info: dict[str, str] = {}
    for key, value in trailing_metadata or ():
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            bad = error_details_pb2.BadRequest()
            error_info = error_details_pb2.ErrorInfo()
            if detail.Unpack(bad):
                violations.update({v.field: v.description for v in bad.field_violations})
            elif detail.Unpack(error_info):
                info.update(error_info.metadata)
    return violations, info


def from_rpc_error(error: grpc.RpcError) -> FlowstateError:
    """The client exception for a failed call (sync `grpc.RpcError` or `grpc.aio.AioRpcError`)."""
    code = error.code()  # type: ignore[attr-defined]
    message = error.details() or code.name  # type: ignore[attr-defined]
    cls = _BY_CODE.get(code, FlowstateError)
    violations, info = _details(error.trailing_metadata())  # type: ignore[attr-defined]
    err = cls(message, code, violations)
    err.info = info
    return err


def lease_lost(error: FlowstateError) -> FlowstateError:
    """A queue call's FAILED_PRECONDITION as `LeaseLost`: the job's lease, not a lock, is gone."""
    if isinstance(error, LockLost):
        lost = LeaseLost(error.message, error.code)
        lost.info = error.info
        return lost
    return error
