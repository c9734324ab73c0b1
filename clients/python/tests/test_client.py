"""Every wrapper method, with the sync and the asyncio client, against a live flowstate on Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import flowstate
from flowstate import CacheItem, Check, Limit
from conftest import METRICS, ev, free_port


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def test_session_lifecycle(fs):
    user = unique("user")
    s = await ev(
        fs.sessions.create(
            user_id=user,
            data={"cart": b"3 items"},
            metadata={"ua": "pytest"},
            idle_timeout=timedelta(minutes=10),
        )
    )
    assert len(s.id) == 54 and s.handle and s.version == 1
    assert s.expires_at - s.created_at == timedelta(minutes=10)
    assert s.created_at.tzinfo == timezone.utc
    assert abs(s.created_at - datetime.now(timezone.utc)) < timedelta(seconds=30)

    got = await ev(fs.sessions.get(s.id))
    assert got.data == {"cart": b"3 items"} and got.metadata == {"ua": "pytest"} and got.id == ""

    touched = await ev(fs.sessions.touch(s.id))
    assert touched.last_seen_at >= s.last_seen_at

    updated = await ev(fs.sessions.update(s.id, set={"a": b"1"}, remove=["cart"], expected_version=1))
    assert updated.data == {"a": b"1"} and updated.version == 2
    with pytest.raises(flowstate.Conflict) as conflict:
        await ev(fs.sessions.update(s.id, set={"b": b"2"}, expected_version=1))
    assert "version" in conflict.value.message

    rotated = await ev(fs.sessions.rotate(s.id))
    assert rotated.id != s.id and rotated.data == {"a": b"1"}
    with pytest.raises(flowstate.NotFound):
        await ev(fs.sessions.get(s.id))

    other = await ev(fs.sessions.create(user_id=user))
    listed = await ev(fs.sessions.list(user))
    assert {x.handle for x in listed} == {rotated.handle, other.handle}
    assert await ev(fs.sessions.delete_user(user, keep_handle=other.handle)) == 1
    assert await ev(fs.sessions.delete(handle=other.handle)) is True
    assert await ev(fs.sessions.delete(other.id)) is False
    assert await ev(fs.sessions.list(user)) == []


async def test_invalid_argument_keeps_the_field_violations(fs):
    with pytest.raises(flowstate.InvalidArgument) as err:
        await ev(fs.sessions.create(user_id=""))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "user_id" in err.value.field_violations
    assert "empty" in err.value.field_violations["user_id"]
    with pytest.raises(ValueError):
        await ev(fs.sessions.delete())


async def test_cache_methods(fs):
    ns = unique("ns")
    assert await ev(fs.cache.set(ns, "a", b"1", ttl=timedelta(minutes=1), tags=["t"])) is True
    assert await ev(fs.cache.set(ns, "a", b"2", condition="if_absent")) is False
    hit = await ev(fs.cache.get(ns, "a"))
    assert hit.found and hit.value == b"1" and not hit.stale
    assert timedelta(seconds=50) < hit.ttl_remaining <= timedelta(minutes=1)
    assert await ev(fs.cache.set_many(ns, [CacheItem("b", b"x", tags=["t"]), CacheItem("c", b"y", condition="if_present")])) == [True, False]
    entries = await ev(fs.cache.get_many(ns, ["c", "b", "a"]))
    assert [(e.key, e.found, e.value) for e in entries] == [("c", False, b""), ("b", True, b"x"), ("a", True, b"1")]
    assert await ev(fs.cache.invalidate_tags(ns, ["t"])) == 2
    assert not (await ev(fs.cache.get(ns, "a"))).found
    await ev(fs.cache.set(ns, "d", b"z"))
    assert await ev(fs.cache.delete(ns, ["d", "missing"])) == 1
    await ev(fs.cache.set(ns, "e", b"z"))
    await ev(fs.cache.invalidate_namespace(ns))
    assert not (await ev(fs.cache.get(ns, "e"))).found
    lease = await ev(fs.cache.get(ns, "e", lease=True))
    assert lease.lease_token and not lease.lease_wait
    assert (await ev(fs.cache.get(ns, "e", lease=True))).lease_wait
    assert await ev(fs.cache.set(ns, "e", b"v", lease_token=lease.lease_token)) is True


async def test_get_or_compute_uses_cached_values(fs):
    ns = unique("ns")
    calls = []

    def compute() -> bytes:
        calls.append(1)
        return b"computed"

    assert await ev(fs.cache.get_or_compute(ns, "k", compute, ttl=timedelta(minutes=5))) == b"computed"
    assert await ev(fs.cache.get_or_compute(ns, "k", compute)) == b"computed"
    assert len(calls) == 1


def test_get_or_compute_computes_once_across_threads(target):
    ns = unique("ns")
    calls = []
    lock = threading.Lock()

    def compute() -> bytes:
        with lock:
            calls.append(1)
        threading.Event().wait(0.2)  # a slow recomputation
        return b"value"

    results = []
    with flowstate.Client(target) as fs:
        threads = [
            threading.Thread(target=lambda: results.append(fs.cache.get_or_compute(ns, "hot", compute)))
            for _ in range(16)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results == [b"value"] * 16
    assert len(calls) == 1, "exactly one caller recomputes"


async def test_get_or_compute_computes_once_across_tasks(target):
    ns = unique("ns")
    calls = []

    async def compute() -> bytes:
        calls.append(1)
        await asyncio.sleep(0.2)
        return b"value"

    async with flowstate.AsyncClient(target) as fs:
        results = await asyncio.gather(*(fs.cache.get_or_compute(ns, "hot", compute) for _ in range(16)))
    assert results == [b"value"] * 16
    assert len(calls) == 1


async def test_rate_limits(fs):
    key = unique("user")
    inline = Limit("gcra", limit=2, period=timedelta(hours=1))
    first = await ev(fs.ratelimit.check([("api", key), Check(inline, key)]))
    assert first.allowed and [r.remaining for r in first.results] == [2, 1]
    peek = await ev(fs.ratelimit.check([("api", key)], dry_run=True))
    assert peek.results[0].remaining == 1, "dry run reports what a real check would leave"
    await ev(fs.ratelimit.enforce([Check(inline, key)]))
    with pytest.raises(flowstate.RateLimited) as limited:
        await ev(fs.ratelimit.enforce([Check(inline, key)]))
    assert timedelta(0) < limited.value.retry_after <= timedelta(hours=1)
    await ev(fs.ratelimit.reset(inline, key))
    assert (await ev(fs.ratelimit.check([Check(inline, key)], cost=2))).allowed
    with pytest.raises(flowstate.NotFound):
        await ev(fs.ratelimit.check([("no-such-limit", key)]))
    with pytest.raises(flowstate.InvalidArgument) as err:
        await ev(fs.ratelimit.check([("api", "")]))
    assert "checks[0].key" in err.value.field_violations


async def test_health(fs, target):
    assert await ev(fs.health("readiness"))
    assert await ev(fs.health(""))
    assert await ev(fs.health("flowstate.v1.CacheService"))
    with grpc.insecure_channel(target) as channel:
        r = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="readiness"))
        assert r.status == health_pb2.HealthCheckResponse.SERVING


async def test_transport_errors_map_to_exceptions():
    dead = f"127.0.0.1:{free_port()}"
    with flowstate.Client(dead, timeout=1.0) as fs:
        with pytest.raises(flowstate.Unavailable):
            fs.cache.get("ns", "k")
    async with flowstate.AsyncClient(dead, timeout=1.0) as afs:
        with pytest.raises(flowstate.Unavailable):
            await afs.cache.get("ns", "k")


def test_a_hung_store_answers_unavailable_before_the_deadline(target, redis_server):
    _, redis = redis_server
    os.kill(redis.pid, signal.SIGSTOP)
    try:
        # The server gives up on the store after redis.command_timeout (500 ms) and says so;
        # a DEADLINE_EXCEEDED here would mean the call hung until the client's 3 s ran out.
        with flowstate.Client(target, timeout=3.0) as fs:
            with pytest.raises(flowstate.Unavailable):
                fs.sessions.list("u")
        with flowstate.Client(target, timeout=0.1) as fs:
            with pytest.raises(flowstate.DeadlineExceeded):
                fs.sessions.list("u")
    finally:
        os.kill(redis.pid, signal.SIGCONT)
    with flowstate.Client(target) as fs:
        deadline = time.monotonic() + 10
        while not fs.health("readiness"):
            assert time.monotonic() < deadline, "flowstate did not recover"
            time.sleep(0.05)


async def test_bearer_token_is_sent(target):
    seen = []

    class Capture(grpc.UnaryUnaryClientInterceptor):
        def intercept_unary_unary(self, continuation, details, request):
            seen.append(dict(details.metadata or ()))
            return continuation(details, request)

    fs = flowstate.Client(target, api_key="secret-key")
    fs._channel = grpc.intercept_channel(fs._channel, Capture())
    fs.cache = type(fs.cache)(fs)
    fs.cache.get("ns", "k")
    assert seen and seen[0].get("authorization") == "Bearer secret-key"
    fs.close()


def rpc_attempts(target: str, method: str, code: str) -> int:
    """How many calls of `method` the server answered with `code`, from its metrics."""
    import urllib.request

    text = urllib.request.urlopen(METRICS[target], timeout=5).read().decode()
    total = 0
    for line in text.splitlines():
        if line.startswith("flowstate_rpc_requests_total{") and f'method="{method}"' in line and f'code="{code}"' in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def test_only_calls_idempotent_in_effect_are_retried(target, redis_server):
    """With the store hung, every call fails UNAVAILABLE; the server's own count of attempts
    shows which ones the client repeated (gRPC retries them up to 3 times)."""
    _, redis = redis_server
    calls = {
        "InvalidateTags": (lambda fs: fs.cache.invalidate_tags("ns", ["t"]), 3),
        "GetMany": (lambda fs: fs.cache.get_many("ns", ["k"]), 3),
        "DeleteUserSessions": (lambda fs: fs.sessions.delete_user("u"), 1),
        "Reset": (lambda fs: fs.ratelimit.reset("api", "k"), 1),
        "Set": (lambda fs: fs.cache.set("ns", "k", b"v"), 1),
    }
    before = {m: rpc_attempts(target, m, "UNAVAILABLE") for m in calls}
    os.kill(redis.pid, signal.SIGSTOP)
    try:
        with flowstate.Client(target, timeout=5.0) as fs:
            for method, (call, _) in calls.items():
                with pytest.raises(flowstate.Unavailable):
                    call(fs)
    finally:
        os.kill(redis.pid, signal.SIGCONT)
    for method, (_, attempts) in calls.items():
        assert rpc_attempts(target, method, "UNAVAILABLE") - before[method] == attempts, method
    with flowstate.Client(target) as fs:
        deadline = time.monotonic() + 10
        while not fs.health("readiness"):
            assert time.monotonic() < deadline, "flowstate did not recover"
            time.sleep(0.05)
