"""One trace from a FastAPI request through the Python client into flowstate and Redis.

A minimal OTLP/gRPC receiver (the `opentelemetry-proto` stubs) collects the spans of both sides:
the backend's (FastAPI instrumentation + the client's interceptor, exported by the OpenTelemetry
SDK) and flowstate's (`tracing.otlp_endpoint`). flowstate runs with `sample_ratio = 0`, so it
records a call only because the caller's `traceparent` says the trace is sampled: calls without
a trace context (its own health checks, an untraced client) or with an unsampled one leave no
span at all.
"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent import futures
from contextlib import asynccontextmanager

import grpc
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

import flowstate
from flowstate.v1 import cache_pb2, cache_pb2_grpc
from conftest import free_port, serving, start_flowstate, stop, wait_until

SERVER = trace_pb2.Span.SPAN_KIND_SERVER
CLIENT = trace_pb2.Span.SPAN_KIND_CLIENT


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every exported span with the `service.name` of its resource."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, trace_pb2.Span]] = []
        self._lock = threading.Lock()

    def Export(self, request, context):  # noqa: N802 (the gRPC method's name)
        with self._lock:
            for resource_spans in request.resource_spans:
                attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    self.spans.extend((attrs.get("service.name", ""), s) for s in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def of(self, service: str) -> list[trace_pb2.Span]:
        with self._lock:
            return [s for name, s in self.spans if name == service]


def attributes(span: trace_pb2.Span) -> dict[str, object]:
    out: dict[str, object] = {}
    for a in span.attributes:
        kind = a.value.WhichOneof("value")
        out[a.key] = getattr(a.value, kind) if kind else None
    return out


@pytest.fixture(scope="module")
def receiver():
    sink = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield sink, f"127.0.0.1:{port}"
    server.stop(grace=None)


@pytest.fixture(scope="module")
def traced_flowstate(redis_server, receiver):
    redis_url, _ = redis_server
    _, endpoint = receiver
    proc, address, _ = start_flowstate(
        redis_url,
        '[cache.namespaces.traced]\nttl = "5m"\n',
        lambda a: serving(grpc.insecure_channel(a)),
        env_extra={
            "FLOWSTATE_TRACING__OTLP_ENDPOINT": f"http://{endpoint}",
            "FLOWSTATE_TRACING__SAMPLE_RATIO": "0",
            "FLOWSTATE_REDIS__KEY_PREFIX": "traced",
        },
    )
    yield address
    stop(proc)


def test_one_trace_from_fastapi_through_the_client_into_flowstate_and_redis(receiver, traced_flowstate):
    sink, endpoint = receiver
    provider = TracerProvider(resource=Resource.create({"service.name": "backend"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True)))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.fs = flowstate.AsyncClient(traced_flowstate, tracing=provider)
        yield
        await app.state.fs.close()

    app = FastAPI(lifespan=lifespan)

    @app.get("/profile/{user}")
    async def profile(user: str) -> dict:
        found = await app.state.fs.cache.get("traced", user)
        return {"hit": found.found}

    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)
    user = f"u-{uuid.uuid4().hex[:8]}"
    with TestClient(app) as http:
        assert http.get(f"/profile/{user}").json() == {"hit": False}
    # A call from a client that does not trace, and flowstate's own readiness probes: sampled
    # out at ratio 0 (no parent says otherwise).
    with flowstate.Client(traced_flowstate, tracing=False) as untraced:
        untraced.cache.get("traced", user)
    # A caller whose trace is not sampled (flag 00): flowstate records nothing of it either.
    with grpc.insecure_channel(traced_flowstate) as channel:
        unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
        cache_pb2_grpc.CacheServiceStub(channel).Get(
            cache_pb2.CacheGetRequest(namespace="traced", key=user), metadata=[("traceparent", unsampled)], timeout=2
        )
    provider.force_flush()

    (request,) = [s for s in sink.of("backend") if s.kind == SERVER]
    assert request.name == "GET /profile/{user}"
    (call,) = [s for s in sink.of("backend") if s.kind == CLIENT]
    assert call.name == "flowstate.v1.CacheService/Get"
    assert call.trace_id == request.trace_id and call.parent_span_id == request.span_id
    assert attributes(call)["rpc.system"] == "grpc" and attributes(call)["rpc.grpc.status_code"] == 0

    def flowstate_spans_arrived() -> bool:
        return any(s.kind == CLIENT for s in sink.of("flowstate"))

    assert wait_until(flowstate_spans_arrived, 10), "flowstate exported no store span"
    time.sleep(1.5)  # a batch later: anything else flowstate would send has arrived
    spans = sink.of("flowstate")
    assert {s.trace_id for s in spans} == {request.trace_id}, "only the sampled trace is recorded"
    (rpc,) = [s for s in spans if s.kind == SERVER]
    assert rpc.name == "flowstate.v1.CacheService/Get"
    assert rpc.parent_span_id == call.span_id, "the RPC span continues the client's span"
    rpc_attrs = attributes(rpc)
    assert rpc_attrs["rpc.system"] == "grpc" and rpc_attrs["rpc.service"] == "flowstate.v1.CacheService"
    assert rpc_attrs["rpc.method"] == "Get" and rpc_attrs["rpc.grpc.status_code"] == 0
    assert rpc_attrs["tenant"] == "default"
    stores = [s for s in spans if s.kind == CLIENT]
    assert stores and all(s.parent_span_id == rpc.span_id for s in stores)
    assert all(attributes(s)["db.system.name"] == "redis" for s in stores)
    assert call.start_time_unix_nano <= rpc.start_time_unix_nano <= stores[0].start_time_unix_nano
    assert stores[0].end_time_unix_nano <= rpc.end_time_unix_nano


def test_a_failed_call_marks_the_client_span_and_names_the_code(receiver, traced_flowstate):
    sink, endpoint = receiver
    provider = TracerProvider(resource=Resource.create({"service.name": "backend-2"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True)))
    tracer = provider.get_tracer("test")
    with flowstate.Client(traced_flowstate, tracing=provider) as fs, tracer.start_as_current_span("job"):
        with pytest.raises(flowstate.InvalidArgument):
            fs.cache.get("", "key")
    provider.force_flush()
    (call,) = [s for s in sink.of("backend-2") if s.kind == CLIENT]
    assert call.status.code == trace_pb2.Status.STATUS_CODE_ERROR
    assert attributes(call)["rpc.grpc.status_code"] == 3

    def rpc_span():
        return [s for s in sink.of("flowstate") if s.kind == SERVER and s.parent_span_id == call.span_id]

    assert wait_until(lambda: rpc_span(), 10)
    (rpc,) = rpc_span()
    # The caller's mistake, not flowstate's: the server span is not an error.
    assert attributes(rpc)["rpc.grpc.status_code"] == 3
    assert rpc.status.code != trace_pb2.Status.STATUS_CODE_ERROR
