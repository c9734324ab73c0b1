"""OpenTelemetry context propagation: a client span per call, and the W3C `traceparent` in the
call's metadata, so flowstate's server span (and its Redis spans) join the caller's trace.

Active when `opentelemetry-api` is installed (the `otel` extra) unless the client was built with
`tracing=False`; without it no interceptor is installed and calls cost nothing more. Spans go to
the global tracer provider, or to the one passed as `tracing=`.
The span is the caller's view of one call, retries by gRPC included; whether it is recorded
is the caller's tracer provider's decision, and flowstate follows it (parent-based sampling).
"""

from __future__ import annotations

from typing import Any

import grpc

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError:  # pragma: no cover - exercised by installs without the extra
    trace = None

_TRACER_NAME = "flowstate-client"


def available() -> bool:
    """Whether opentelemetry-api is importable."""
    return trace is not None


def _method(details: Any) -> tuple[str, str]:
    """(service, method) of a call's `/package.Service/Method` path."""
    method = details.method
    if isinstance(method, bytes):
        method = method.decode()
    service, _, name = method.lstrip("/").partition("/")
    return service, name


def _start(tracer: Any, details: Any) -> tuple[Any, list[tuple[str, str]]]:
    """A client span for the call (a child of the caller's current span), and the call's
    metadata with the span's context injected."""
    service, name = _method(details)
    span = tracer.start_span(
        f"{service}/{name}",
        kind=SpanKind.CLIENT,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
    )
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    metadata = [(k, v) for k, v in (details.metadata or ()) if k not in carrier]
    metadata.extend(carrier.items())
    return span, metadata


def _finish(span: Any, code: grpc.StatusCode | None, details: str | None = None) -> None:
    if code is not None:
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code != grpc.StatusCode.OK:
            span.set_status(Status(StatusCode.ERROR, details or code.name))
    span.end()


class _Details(grpc.ClientCallDetails):
    def __init__(self, base: Any, metadata: list[tuple[str, str]]) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = metadata
        self.credentials = base.credentials
        self.wait_for_ready = getattr(base, "wait_for_ready", None)
        self.compression = getattr(base, "compression", None)


class Interceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """For `grpc` channels (the sync `Client`)."""

    def __init__(self, tracer: Any) -> None:
        self._tracer = tracer

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        span, metadata = _start(self._tracer, details)
        try:
            outcome = continuation(_Details(details, metadata), request)
        except BaseException as e:
            _finish(span, grpc.StatusCode.UNKNOWN, repr(e))
            raise
        # The blocking stubs hand back a finished call; code() waits for one that is not.
        _finish(span, outcome.code(), outcome.details())
        return outcome

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        # A stream can live for hours: the span covers opening it, and the server's span is
        # linked to it through the metadata.
        span, metadata = _start(self._tracer, details)
        try:
            return continuation(_Details(details, metadata), request)
        finally:
            span.end()


class AsyncInterceptor(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    """For `grpc.aio` channels (`AsyncClient`)."""

    def __init__(self, tracer: Any) -> None:
        self._tracer = tracer

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        span, metadata = _start(self._tracer, details)
        try:
            call = await continuation(_aio_details(details, metadata), request)
            code, text = await call.code(), await call.details()
        except BaseException as e:
            _finish(span, grpc.StatusCode.UNKNOWN, repr(e))
            raise
        # On a client span every code but OK is an error (the caller did not get its answer).
        _finish(span, code, text)
        return call

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        span, metadata = _start(self._tracer, details)
        try:
            return await continuation(_aio_details(details, metadata), request)
        finally:
            span.end()


def _aio_details(base: Any, metadata: list[tuple[str, str]]) -> Any:
    return grpc.aio.ClientCallDetails(
        method=base.method,
        timeout=base.timeout,
        metadata=grpc.aio.Metadata(*metadata),
        credentials=base.credentials,
        wait_for_ready=base.wait_for_ready,
    )


def tracer(choice: Any) -> Any | None:
    """The tracer a client's interceptor uses, or None for no interceptor. `choice`: None (on
    when opentelemetry-api is installed, with the global tracer provider, even one set later),
    True (the same, but opentelemetry-api is required), False (off), or a TracerProvider."""
    if choice is False:
        return None
    if not available():
        if choice is None:
            return None
        raise ValueError("tracing needs opentelemetry-api: pip install 'flowstate-client[otel]'")
    if choice is None or choice is True:
        return trace.get_tracer(_TRACER_NAME)
    return choice.get_tracer(_TRACER_NAME)
