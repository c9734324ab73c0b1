"""Usage metering through the Python client: a million events recorded through the buffer and
queried back exactly per minute and per day; dimensions, distinct counts and top subjects; the
buffer keeps what a failed flush could not send; the asyncio client."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone

import pytest

import flowstate
from conftest import port_open, skewed_env, start_flowstate, stop


def window() -> tuple[datetime, datetime]:
    now = datetime.now(timezone.utc)
    return now - timedelta(hours=1), now + timedelta(hours=1)


def test_a_million_events_through_the_buffer_query_back_exactly(target):
    with flowstate.Client(target) as fs:
        fs.usage.flush_interval = 0.2
        subjects = [f"ws-{i}" for i in range(50)]
        want: dict[str, int] = {}
        started = time.monotonic()
        for i in range(1_000_000):
            subject = subjects[i % 50]
            amount = i % 7 + 1
            fs.usage.record("py_tokens", subject, amount, dimensions={"model": "m" + str(i % 3)})
            want[subject] = want.get(subject, 0) + amount
        recorded_in = time.monotonic() - started
        fs.usage.flush()
        assert fs.usage.dropped == 0
        start, end = window()
        for subject in subjects:
            minutes = fs.usage.query("py_tokens", subject, start, end, granularity="minute")
            assert sum(p.value for p in minutes[0].points) == want[subject] == minutes[0].total
            days = fs.usage.query("py_tokens", subject, start - timedelta(days=1), end, granularity="day")
            assert days[0].total == want[subject]
        by_model = fs.usage.query("py_tokens", "ws-0", start, end, granularity="hour", group_by="model")
        assert {s.value for s in by_model} == {"m0", "m1", "m2"}
        assert sum(s.total for s in by_model) == want["ws-0"]
        top = fs.usage.top("py_tokens", timedelta(hours=1), n=3)
        assert [e.value for e in top] == sorted((want[s] for s in subjects), reverse=True)[:3]
        print(f"1,000,000 events buffered in {recorded_in:.2f} s ({1_000_000 / recorded_in:,.0f}/s)")


def test_distinct_counts_and_explicit_flush(target):
    with flowstate.Client(target) as fs:
        for i in range(500):
            fs.usage.record("py_active", "ws-u", unique=f"user-{i % 37}")
        assert fs.usage.flush() > 0
        start, end = window()
        series = fs.usage.query("py_active", "ws-u", start, end, granularity="day", unique=True)
        assert series[0].total in range(36, 39)


def test_a_failed_flush_keeps_its_events(redis_server, tmp_path):
    """flowstate down: the flusher fails, the events stay buffered, and arrive once it is back."""
    redis_url, _ = redis_server
    proc, address, _ = start_flowstate(redis_url, "", lambda a: port_open(int(a.rsplit(":", 1)[1])))
    port = int(address.rsplit(":", 1)[1])
    fs = flowstate.Client(address, timeout=1.0)
    fs.usage.flush_interval = 0.1
    stop(proc)
    for _ in range(100):
        fs.usage.record("py_outage", "ws", 2)
    with pytest.raises(flowstate.Unavailable):
        fs.usage.flush()
    assert fs.usage.pending == 1, "summed into one entry, kept"
    proc, _, _ = start_flowstate(redis_url, "", lambda a: port_open(port), port=port)
    try:
        deadline = time.monotonic() + 15
        while fs.usage.pending and time.monotonic() < deadline:
            time.sleep(0.1)
        assert fs.usage.pending == 0, "the background flusher sent it"
        start, end = window()
        assert fs.usage.query("py_outage", "ws", start, end, granularity="hour")[0].total == 200
    finally:
        fs.close()
        stop(proc)


def test_asyncio_usage(target):
    async def main() -> None:
        async with flowstate.AsyncClient(target) as fs:
            for i in range(1000):
                fs.usage.record("py_async", f"s{i % 4}", 3)  # no await: never waits
            await fs.usage.flush()
            start, end = window()
            series = await fs.usage.query("py_async", "s1", start, end, granularity="minute")
            assert series[0].total == 750
            top = await fs.usage.top("py_async", timedelta(minutes=5), n=4)
            assert sorted(e.value for e in top) == [750] * 4
        # Closing flushes what is left.
        async with flowstate.AsyncClient(target) as fs:
            fs.usage.record("py_async_close", "s", 5)
        async with flowstate.AsyncClient(target) as fs:
            start, end = window()
            assert (await fs.usage.query("py_async_close", "s", start, end, granularity="hour"))[0].total == 5

    asyncio.run(main())


def test_replicas_with_skewed_clocks_count_into_the_same_minute(target, redis_server):
    """Two replicas, one whose clock runs 90 s ahead: events recorded through both land in the
    same minute bucket, because Redis's clock names the buckets (by the skewed replica's own
    clock they would be a minute or two apart)."""
    url, _ = redis_server
    skewed, other, _ = start_flowstate(
        url, "", lambda a: port_open(int(a.rsplit(":", 1)[1])), env_extra=skewed_env("+90")
    )
    try:
        if datetime.now(timezone.utc).second > 54:
            time.sleep(61 - datetime.now(timezone.utc).second)
        with flowstate.Client(target) as fs, flowstate.Client(other) as fs_skewed:
            for _ in range(100):
                fs.usage.record("py_skew", "ws", 1)
                fs_skewed.usage.record("py_skew", "ws", 1)
            fs.usage.flush()
            fs_skewed.usage.flush()
            start, end = window()
            for client in (fs, fs_skewed):
                points = client.usage.query("py_skew", "ws", start, end, granularity="minute")[0].points
                assert [p.value for p in points if p.value] == [200], "one minute, both replicas"
    finally:
        stop(skewed)


def test_bad_events_fail_at_the_call_or_are_dropped_alone(target):
    with flowstate.Client(target) as fs:
        with pytest.raises(ValueError):
            fs.usage.record("py_bad", "ws", 1.5)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            fs.usage.record("py_bad", "", 1)
        # Valid types, refused by flowstate (a metric name it does not accept): dropped alone.
        fs.usage.record("not a metric!", "ws", 1)
        fs.usage.record("also bad!", "ws", 1)
        for _ in range(10):
            fs.usage.record("py_bad", "ws", 2)
        fs.usage.flush()
        assert fs.usage.rejected == 2 and fs.usage.pending == 0
        start, end = window()
        assert fs.usage.query("py_bad", "ws", start, end, granularity="hour")[0].total == 20


def test_a_replica_whose_clock_lags_reads_the_current_bucket(target, redis_server):
    """Without an end, a Query ends at the store's current bucket even through a replica whose
    clock is 55 s behind (by its own clock the current minute is usually the previous one)."""
    url, _ = redis_server
    lagging, other, _ = start_flowstate(
        url, "", lambda a: port_open(int(a.rsplit(":", 1)[1])), env_extra=skewed_env("-55")
    )
    try:
        if datetime.now(timezone.utc).second > 54:
            time.sleep(61 - datetime.now(timezone.utc).second)
        with flowstate.Client(target) as fs, flowstate.Client(other) as fs_lagging:
            fs.usage.record("py_lag", "ws", 7)
            fs.usage.flush()
            start = datetime.now(timezone.utc) - timedelta(minutes=10)
            series = fs_lagging.usage.query("py_lag", "ws", start, granularity="minute")[0]
            assert series.total == 7, "the store's current minute is read"
            assert series.points[-1].value == 7 or series.points[-2].value == 7
    finally:
        stop(lagging)
