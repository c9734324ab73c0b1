"""The client's decisions without a server (flowstate._sansio): get_or_compute, subscription
resume, lock and lease keep-alive, the worker's settling and backoff, usage batches."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import grpc
import pytest

import flowstate
from flowstate import _sansio as s
from flowstate import types as t
from flowstate.errors import InvalidArgument
from flowstate.v1 import events_pb2


def result(found=False, stale=False, lease_token=None, value=b"") -> t.CacheResult:
    return t.CacheResult(found=found, value=value, ttl_remaining=timedelta(0), stale=stale,
                         lease_token=lease_token, lease_wait=False)


def test_cache_fill_serves_hits_computes_with_the_lease_and_waits_without_one():
    fill = s.CacheFill(timedelta(milliseconds=25), timedelta(seconds=2), now=100.0)
    assert fill.after(result(found=True, value=b"v"), 100.0) == s.CacheStep("value", b"v")
    assert fill.after(result(lease_token="L"), 100.0) == s.CacheStep("compute", lease_token="L")
    # A stale value is served to everyone but the lease holder.
    assert fill.after(result(found=True, stale=True, value=b"old", lease_token="L"), 100.0).kind == "compute"
    assert fill.after(result(found=True, stale=True, value=b"old"), 100.0) == s.CacheStep("value", b"old")
    assert fill.after(result(), 101.0) == s.CacheStep("wait", wait=0.025)
    # Past max_wait a waiter computes for itself, without storing (it holds no lease).
    assert fill.after(result(), 102.0) == s.CacheStep("compute")


class RpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self):
        return ()


def subscribed(**positions: str) -> events_pb2.SubscribeResponse:
    return events_pb2.SubscribeResponse(subscribed=events_pb2.Subscribed(positions=positions))


def test_resume_keeps_positions_and_resumes_after_outages_only():
    r = s.Resume(["a", "b"], {"a": "1-0"}, "latest", accept_gaps=True, reconnect=True)
    assert dict(r.request().after) == {"a": "1-0"}
    assert r.received(subscribed(a="1-0", b="5-0")) is None
    event = events_pb2.SubscribeResponse(event=events_pb2.Event(topic="b", id="6-0", payload=b"x"))
    assert r.received(event) == t.Event(topic="b", id="6-0", payload=b"x", key="",
                                        published_at=datetime(1970, 1, 1, tzinfo=timezone.utc))
    gap = r.received(events_pb2.SubscribeResponse(gap=events_pb2.Gap(topic="a", after="1-0", first_id="3-0")))
    assert gap == t.Gap(topic="a", after="1-0", first_id="3-0")
    # Subscribing again starts after what was handed out.
    assert dict(r.request().after) == {"a": "1-0", "b": "6-0"}
    for code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED):
        assert r.failed(RpcError(code)) is None, code
    assert isinstance(r.failed(RpcError(grpc.StatusCode.OUT_OF_RANGE)), flowstate.EventsExpired)
    assert isinstance(r.failed(RpcError(grpc.StatusCode.PERMISSION_DENIED)), flowstate.PermissionDenied)
    # A growing pause between resumes, back to the first once subscribed again.
    assert [r.resume() for _ in range(8)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    assert r.resumes == 8
    r.received(subscribed(a="1-0"))
    assert r.resume() == 0.05


def test_resume_without_reconnect_raises_every_failure():
    r = s.Resume(["a"], None, "earliest", accept_gaps=False, reconnect=False)
    assert r.request().start == events_pb2.SubscribeRequest.START_EARLIEST
    assert isinstance(r.failed(RpcError(grpc.StatusCode.UNAVAILABLE)), flowstate.Unavailable)


def test_keep_alive_extends_at_a_third_and_stops_only_when_lost():
    k = s.KeepAlive(timedelta(seconds=30))
    assert k.every == 10 and k.call_timeout == 5
    assert k.lost(flowstate.LockLost("gone", grpc.StatusCode.FAILED_PRECONDITION))
    assert k.lost(flowstate.LeaseLost("gone", grpc.StatusCode.FAILED_PRECONDITION))
    assert not k.lost(flowstate.Unavailable("down", grpc.StatusCode.UNAVAILABLE))
    assert s.KeepAlive(timedelta(milliseconds=60)).call_timeout == 0.05


def job(lease_left: float, timeout: timedelta = timedelta(seconds=30)) -> t.Job:
    now = datetime.now(timezone.utc)
    return t.Job(queue="q", id="j", payload=b"", lease_token="L", attempt=1, max_attempts=3, enqueued_at=now,
                 lease_expires_at=now, last_error="", priority="normal", waited=timedelta(0), timeout=timeout,
                 _deadline=time.monotonic() + lease_left)


def test_a_job_heartbeat_is_every_third_of_its_timeout_and_at_least_10_ms():
    assert s.job_heartbeat(job(30, timedelta(seconds=3))).every == pytest.approx(1.0)
    assert s.job_heartbeat(job(30, timedelta(0))).every == pytest.approx(0.01)


def test_settle_retries_while_unreachable_until_the_lease_runs_out():
    unavailable = flowstate.Unavailable("down", grpc.StatusCode.UNAVAILABLE)
    settle = s.Settle(job(lease_left=30))
    assert [settle.retry_after(unavailable) for _ in range(6)] == [0.05, 0.1, 0.2, 0.4, 0.5, 0.5]
    assert settle.retry_after(flowstate.LeaseLost("lost", grpc.StatusCode.FAILED_PRECONDITION)) is None
    assert s.Settle(job(lease_left=0.01)).retry_after(unavailable) is None


def test_backoff_doubles_to_its_bound_and_starts_over():
    b = s.Backoff(0.05, 0.3)
    assert [b.failed() for _ in range(4)] == [0.05, 0.1, 0.2, 0.3]
    b.succeeded()
    assert b.failed() == 0.05


def test_usage_batches_drop_what_flowstate_refused_and_stay_bounded():
    buffer = s.Buffer(max_buffer=2)
    for key in ("a", "b", "a", "c"):
        buffer.add(("m", key, (), ""), 1)
    assert buffer.dropped == 1 and buffer.take() == {("m", "a", (), ""): 2, ("m", "b", (), ""): 1}
    batch = s.Batch([(("m", str(i), (), ""), 1) for i in range(3)])
    bad = InvalidArgument("bad", grpc.StatusCode.INVALID_ARGUMENT, {"events[1].metric": "no"})
    assert batch.without_rejected(bad) == 1 and [k[1] for k, _ in batch.entries] == ["0", "2"]
    outbox = s.Outbox()
    assert outbox.keep([s.Batch([(("m", "x", (), ""), 1)] * 3), batch], limit=2) == 3
    assert outbox.size() == 2 and outbox.take(s.Buffer(1), max_batch=10)[0].id == batch.id


def test_a_flush_in_the_air_still_counts_as_pending():
    # A flush takes the buffer; until each batch is sent or kept it still counts, so a caller
    # waiting for `pending == 0` cannot mistake a flush that is about to fail for a delivery.
    buffer, outbox = s.Buffer(max_buffer=10), s.Outbox()
    for key in ("a", "b", "c"):
        buffer.add(("m", key, (), ""), 1)
    first, second = outbox.take(buffer, max_batch=2)
    assert len(buffer) == 0 and outbox.size() == 3
    outbox.sent(first)
    assert outbox.size() == 1
    assert outbox.keep([second], limit=10) == 0 and outbox.size() == 1
    assert outbox.take(buffer, max_batch=2) == [second]
