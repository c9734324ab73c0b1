"""The retry policy comes from the protos: every flowstate.v1 method is classified there, and
the calls they mark idempotent are retried on UNAVAILABLE while the others are not (against an
in-process server that fails the first attempts; no flowstate or Redis needed)."""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent import futures
from datetime import datetime, timedelta, timezone

import grpc
import pytest
from google.protobuf import descriptor_pb2

import flowstate
from flowstate import _channel
from flowstate.v1 import ratelimit_pb2, ratelimit_pb2_grpc, usage_pb2, usage_pb2_grpc

# Left unmarked on purpose (IDEMPOTENCY_UNKNOWN): each creates, consumes or acts on what may have
# changed since the first attempt, so a blind resend could act twice. The protos say why. A
# new method must be marked in its proto or added here.
NOT_IDEMPOTENT = {
    "flowstate.v1.SessionService": {"CreateSession", "UpdateSession", "TouchSession", "RotateSession",
                                    "DeleteUserSessions"},
    "flowstate.v1.CacheService": {"Get", "Set", "SetMany"},
    "flowstate.v1.RateLimitService": {"Check", "Reset"},
    "flowstate.v1.LockService": {"Acquire", "Release"},
    "flowstate.v1.EventService": {"Publish"},
    "flowstate.v1.QueueService": {"Enqueue", "EnqueueMany", "Fetch", "Ack", "Fail", "GiveBack", "Retry",
                                  "Discard"},
    "flowstate.v1.SemanticCacheService": {"Set"},
    "flowstate.v1.UsageService": {"Record"},
}

MARKED = {descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS, descriptor_pb2.MethodOptions.IDEMPOTENT}


def services():
    return [s for f in _channel.proto_files() for s in f.services_by_name.values()]


def test_every_method_of_every_service_is_classified():
    found = {s.full_name for s in services()}
    assert found >= set(NOT_IDEMPOTENT), "a service of this list is gone from the protos"
    assert len(found) >= 8
    for service in services():
        unmarked = NOT_IDEMPOTENT.get(service.full_name, set())
        for method in service.methods:
            level = method.GetOptions().idempotency_level
            if method.name in unmarked:
                assert level == descriptor_pb2.MethodOptions.IDEMPOTENCY_UNKNOWN, (
                    f"{method.full_name} is marked in its proto: take it off NOT_IDEMPOTENT"
                )
            else:
                assert level in MARKED, (
                    f"{method.full_name}: mark it `option idempotency_level = NO_SIDE_EFFECTS;` (a read) "
                    "or `IDEMPOTENT;` in its proto, or add it to NOT_IDEMPOTENT with the reason in the proto"
                )
        assert unmarked <= {m.name for m in service.methods}, f"{service.full_name}: stale NOT_IDEMPOTENT entry"


def test_the_retried_methods_are_the_marked_unary_ones():
    config = json.loads(_channel.SERVICE_CONFIG)
    (method_config,) = config["methodConfig"]
    named = {(n["service"], n["method"]) for n in method_config["name"]}
    assert method_config["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    want = {("grpc.health.v1.Health", "Check")}
    for service in services():
        for m in service.methods:
            if m.GetOptions().idempotency_level in MARKED and not m.server_streaming:
                want.add((service.full_name, m.name))
    assert named == want
    # The calls that were missing from the hand-kept list.
    assert {("flowstate.v1.UsageService", "Query"), ("flowstate.v1.UsageService", "Top")} <= named
    # Marked (a read) but a stream: a Subscription resumes by itself.
    assert ("flowstate.v1.EventService", "Subscribe") not in named
    for service, methods in NOT_IDEMPOTENT.items():
        assert not {(service, m) for m in methods} & named


class Flaky:
    """Fails the first `failures` attempts of each method with UNAVAILABLE; counts attempts."""

    def __init__(self, failures: int = 1) -> None:
        self.failures = failures
        self.attempts: dict[str, int] = {}
        self.lock = threading.Lock()

    def attempt(self, method: str, context: grpc.ServicerContext) -> None:
        with self.lock:
            n = self.attempts[method] = self.attempts.get(method, 0) + 1
        if n <= self.failures:
            context.abort(grpc.StatusCode.UNAVAILABLE, "store unreachable (test)")


class FlakyUsage(usage_pb2_grpc.UsageServiceServicer):
    def __init__(self, flaky: Flaky) -> None:
        self.flaky = flaky

    def Query(self, request, context):
        self.flaky.attempt("Query", context)
        return usage_pb2.QueryResponse(series=[usage_pb2.Series(total=7)])

    def Top(self, request, context):
        self.flaky.attempt("Top", context)
        return usage_pb2.TopResponse(entries=[usage_pb2.TopEntry(subject="ws", value=7)])

    def Record(self, request, context):
        self.flaky.attempt("Record", context)
        return usage_pb2.RecordResponse(recorded=len(request.events))


class FlakyRateLimits(ratelimit_pb2_grpc.RateLimitServiceServicer):
    def __init__(self, flaky: Flaky) -> None:
        self.flaky = flaky

    def Check(self, request, context):
        self.flaky.attempt("Check", context)
        return ratelimit_pb2.CheckResponse(allowed=True)


@pytest.fixture
def flaky():
    state = Flaky()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    usage_pb2_grpc.add_UsageServiceServicer_to_server(FlakyUsage(state), server)
    ratelimit_pb2_grpc.add_RateLimitServiceServicer_to_server(FlakyRateLimits(state), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", state
    server.stop(None)


def start() -> datetime:
    return datetime.now(timezone.utc) - timedelta(hours=1)


def test_usage_query_and_top_survive_one_unavailable(flaky):
    target, state = flaky
    with flowstate.Client(target) as fs:
        assert fs.usage.query("tokens", "ws", start())[0].total == 7
        assert fs.usage.top("tokens", timedelta(hours=1))[0].value == 7
    assert state.attempts == {"Query": 2, "Top": 2}


def test_asyncio_usage_query_and_top_survive_one_unavailable(flaky):
    target, state = flaky

    async def main() -> None:
        async with flowstate.AsyncClient(target) as fs:
            assert (await fs.usage.query("tokens", "ws", start()))[0].total == 7
            assert (await fs.usage.top("tokens", timedelta(hours=1)))[0].value == 7

    asyncio.run(main())
    assert state.attempts == {"Query": 2, "Top": 2}


def test_consuming_calls_are_not_resent(flaky):
    target, state = flaky
    with flowstate.Client(target) as fs:
        with pytest.raises(flowstate.Unavailable):
            fs.ratelimit.check([("api", "alice")])
        fs.usage.flush_interval = 60  # no background flush in between
        fs.usage.record("tokens", "ws", 3)
        with pytest.raises(flowstate.Unavailable):
            fs.usage.flush()
        assert state.attempts == {"Check": 1, "Record": 1}
        # The client sends a failed batch again itself, with the same batch_id.
        assert fs.usage.flush() == 1
    assert state.attempts == {"Check": 1, "Record": 2}
