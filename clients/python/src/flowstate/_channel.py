"""Channel settings shared by the sync and asyncio clients."""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import pkgutil
from typing import Any, Iterable, Sequence

import grpc
import grpc.aio
from google.protobuf import descriptor_pb2

from flowstate import _tracing

DEFAULT_TIMEOUT = 2.0
"""Seconds: every call gets a deadline; flowstate answers in well under a millisecond."""

# Retried by gRPC itself on UNAVAILABLE (with backoff): the unary calls the protos mark
# `idempotency_level = NO_SIDE_EFFECTS` (reads) or `IDEMPOTENT` (a repeat, after a first attempt
# that may have succeeded, cannot undo or change what another caller did in between beyond what
# a cache may always do: miss). Each proto says why a method is or is not marked. A new service
# or method is covered by marking it there: this module reads the compiled descriptors of every
# `flowstate.v1` proto. Streams are left out: a `Subscription` resumes by itself from its last
# positions (gRPC's retry would end at the stream's first message anyway).
RETRYABLE_LEVELS = frozenset(
    {descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS, descriptor_pb2.MethodOptions.IDEMPOTENT}
)

# Services whose protos carry no idempotency options: grpc.health.v1 (grpcio-health-checking's).
_ALSO_RETRIED = {"grpc.health.v1.Health": ["Check"]}


def proto_files() -> list[Any]:
    """The file descriptors of every generated `flowstate.v1` module."""
    package = importlib.import_module("flowstate.v1")
    names = sorted(m.name for m in pkgutil.iter_modules(package.__path__) if m.name.endswith("_pb2"))
    return [importlib.import_module(f"flowstate.v1.{name}").DESCRIPTOR for name in names]


def retryable(files: Iterable[Any]) -> dict[str, list[str]]:
    """Service full name -> the unary methods marked NO_SIDE_EFFECTS or IDEMPOTENT."""
    methods: dict[str, list[str]] = {}
    for file in files:
        for service in file.services_by_name.values():
            marked = [
                m.name
                for m in service.methods
                if m.GetOptions().idempotency_level in RETRYABLE_LEVELS
                and not (m.client_streaming or m.server_streaming)
            ]
            if marked:
                methods[service.full_name] = marked
    return methods


RETRIED = {**retryable(proto_files()), **_ALSO_RETRIED}
"""The methods retried on UNAVAILABLE, by service (read from the protos)."""

SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [
                    {"service": service, "method": method}
                    for service, methods in RETRIED.items()
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
