"""Channel settings shared by the sync and asyncio clients."""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Sequence

import grpc
import grpc.aio

from flowstate import _tracing

DEFAULT_TIMEOUT = 2.0
"""Seconds: every call gets a deadline; flowstate answers in well under a millisecond."""

# Retried by gRPC itself on UNAVAILABLE (with backoff): only calls idempotent in effect, whose
# repetition (after a first attempt that may have succeeded) cannot undo or change what another
# caller did in between beyond what a cache may always do (miss):
# - reads: GetSession (a touch only slides that session again), ListUserSessions, GetMany;
# - DeleteSession: one session, by its id or handle, which no other session will ever have;
# - cache Delete, InvalidateTags, InvalidateNamespace: a repeat can only cause extra misses, and
#   completes an InvalidateTags that failed half-way (the server keeps every entry findable);
# - lock Inspect (a read) and Extend (a repeat sets the same TTL from a moment later, and only
#   for the holder of the token);
# - semantic Get (a read) and Delete (one entry by its id, which no other entry will have).
# Never retried: CreateSession, UpdateSession, TouchSession, RotateSession, cache Get (it may
# grant a lease), Set, SetMany, rate-limit Check, semantic Set (each could act twice); DeleteUserSessions (a
# repeat would also log out a session created in between); rate-limit Reset (a repeat would
# forget hits counted in between, admitting more than the limit); lock Acquire (a repeat after
# a grant whose answer was lost would take a second holding, with a token nobody has) and
# Release (a repeat after it worked says the lock was lost); event Publish (a repeat is a second
# event); queue Enqueue (a second job), Fetch (a repeat would lease more jobs while the first
# answer's wait out their timeout), Ack, Fail and GiveBack (a repeat after it worked says the
# lease was lost), Retry and Discard. Subscribe resumes by itself from its last positions (see
# `Subscription`).
_IDEMPOTENT = {
    "flowstate.v1.SessionService": ["GetSession", "ListUserSessions", "DeleteSession"],
    "flowstate.v1.CacheService": ["GetMany", "Delete", "InvalidateTags", "InvalidateNamespace"],
    "flowstate.v1.LockService": ["Inspect", "Extend"],
    "flowstate.v1.SemanticCacheService": ["Get", "Delete"],
    "flowstate.v1.QueueService": ["Extend", "Stats", "ListDead", "Pause", "Resume"],
    "grpc.health.v1.Health": ["Check"],
}

SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [
                    {"service": service, "method": method}
                    for service, methods in _IDEMPOTENT.items()
                    for method in methods
                ],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.02s",
                    "maxBackoff": "0.2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


def options(extra: Sequence[tuple[str, object]]) -> list[tuple[str, object]]:
    return [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", SERVICE_CONFIG),
        ("grpc.keepalive_time_ms", 30_000),
        *extra,
    ]


def metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()


Pem = bytes | str | os.PathLike
"""PEM data, or the path of a PEM file."""


def pem(value: Pem | None) -> bytes | None:
    """PEM bytes from bytes or a file path."""
    if value is None or isinstance(value, bytes):
        return value
    return pathlib.Path(value).read_bytes()


def open_channel(
    module: Any,
    target: str,
    tls: bool,
    root_certificates: Pem | None,
    certificate_chain: Pem | None,
    private_key: Pem | None,
    server_name: str | None,
    extra_options: Sequence[tuple[str, object]],
    tracing: Any = None,
) -> Any:
    """A channel from `module` (`grpc` or `grpc.aio`, which share these constructors) with the
    retry service config; TLS when asked for (`tls`, a CA, or a client certificate for mTLS);
    the OpenTelemetry interceptor unless `tracing` is False (see `_tracing.tracer`)."""
    opts = options(extra_options)
    tracer = _tracing.tracer(tracing)
    extra: dict[str, Any] = {}
    if tracer is not None and module is grpc.aio:
        extra["interceptors"] = [_tracing.AsyncInterceptor(tracer)]
    channel = _open(module, target, tls, root_certificates, certificate_chain, private_key, server_name,
                    opts, extra)
    if tracer is not None and module is grpc:
        channel = grpc.intercept_channel(channel, _tracing.Interceptor(tracer))
    return channel


def _open(
    module: Any,
    target: str,
    tls: bool,
    root_certificates: Pem | None,
    certificate_chain: Pem | None,
    private_key: Pem | None,
    server_name: str | None,
    opts: list[tuple[str, object]],
    extra: dict[str, Any],
) -> Any:
    secure = tls or any(v is not None for v in (root_certificates, certificate_chain, private_key))
    if not secure:
        return module.insecure_channel(target, options=opts, **extra)
    if (certificate_chain is None) != (private_key is None):
        raise ValueError("certificate_chain and private_key go together (mTLS)")
    if server_name:
        opts.append(("grpc.ssl_target_name_override", server_name))
    creds = grpc.ssl_channel_credentials(
        root_certificates=pem(root_certificates),
        private_key=pem(private_key),
        certificate_chain=pem(certificate_chain),
    )
    return module.secure_channel(target, creds, options=opts, **extra)
