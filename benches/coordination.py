#!/usr/bin/env python3
"""How fast locks wake their waiters and events reach their subscribers, through the Python
client against a release flowstate on a private Redis (all on this machine, one clock):

    python3 benches/coordination.py [--rounds 300] [--events 300] [--fanout 1000]

- lock wake-up: a holder releases while a waiter is blocked in Acquire(wait); the time from
  the release call to the waiter's grant (release RPC + Pub/Sub wake + the waiter's second
  Acquire), against a plain uncontended Acquire round trip measured in the same run;
- publish -> receive with 1 subscriber, and with `--fanout` subscribers of one topic on one
  replica (over 10 HTTP/2 connections, asyncio): the time from just before Publish to each
  subscriber's receipt. With 1,000 subscribers the Python client decoding 1,000 copies of each
  event is part of what is measured (it is one process on 2 shared cores).

Needs the client importable (`pip install ./clients/python`, or PYTHONPATH=clients/python/src)
and `cargo build --release`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import threading
import time
from datetime import timedelta

from run import ROOT, free_port, wait_port

import flowstate  # noqa: E402


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def summary(name: str, values_ms: list[float]) -> None:
    print(f"{name:<44} n={len(values_ms):>6}  p50 {pct(values_ms, 50):7.3f} ms  p99 {pct(values_ms, 99):7.3f} ms"
          f"  max {max(values_ms):7.3f} ms")


def lock_wakeups(target: str, rounds: int) -> None:
    with flowstate.Client(target, timeout=10) as fs:
        plain = []
        for i in range(rounds):
            t0 = time.perf_counter()
            r = fs.locks.acquire(f"plain-{i}", timedelta(seconds=10))
            plain.append((time.perf_counter() - t0) * 1000)
            fs.locks.release(f"plain-{i}", r.token)
        woke = []
        for i in range(rounds):
            name = f"wake-{i}"
            held = fs.locks.acquire(name, timedelta(seconds=30))
            done: list[float] = []
            waiter = threading.Thread(target=lambda: (fs.locks.acquire(name, timedelta(seconds=5), wait=timedelta(seconds=5)),
                                                      done.append(time.perf_counter())))
            waiter.start()
            while fs.locks.inspect(name).waiters < 1:
                time.sleep(0.001)
            time.sleep(0.005)  # the waiter is asleep in its wait, not between attempts
            t0 = time.perf_counter()
            fs.locks.release(name, held.token)
            waiter.join()
            woke.append((done[0] - t0) * 1000)
        summary("Acquire, uncontended (one round trip)", plain)
        summary("release -> waiter granted (wake-up)", woke)


def one_subscriber(target: str, events: int) -> None:
    with flowstate.Client(target) as fs:
        topic = f"bench-{time.time_ns()}"
        got: list[float] = []
        sub = fs.events.subscribe([topic])

        def read() -> None:
            for e in sub:
                got.append((time.perf_counter() - float(e.payload)) * 1000)
                if len(got) == events:
                    return

        reader = threading.Thread(target=read)
        reader.start()
        while topic not in sub.positions:
            time.sleep(0.001)
        for _ in range(events):
            fs.events.publish(topic, repr(time.perf_counter()).encode())
            time.sleep(0.002)
        reader.join(30)
        sub.close()
        summary("publish -> receive, 1 subscriber", got)


async def fanout(target: str, subscribers: int, events: int) -> None:
    clients = [flowstate.AsyncClient(target) for _ in range(10)]
    topic = f"fan-{time.time_ns()}"
    latencies: list[float] = []
    ready = 0
    done = asyncio.Event()
    remaining = subscribers

    async def subscriber(c: flowstate.AsyncClient) -> None:
        nonlocal ready, remaining
        sub = c.events.subscribe([topic])
        n = 0
        first = True
        async for e in sub:
            latencies.append((time.perf_counter() - float(e.payload)) * 1000)
            n += 1
            if n == events:
                break
        sub.close()
        remaining -= 1
        if remaining == 0:
            done.set()

    tasks = [asyncio.create_task(subscriber(clients[i % 10])) for i in range(subscribers)]
    # Every subscription live (the server counts them) before publishing.
    await asyncio.sleep(2.0)
    publisher = flowstate.AsyncClient(target)
    for _ in range(events):
        await publisher.events.publish(topic, repr(time.perf_counter()).encode())
        await asyncio.sleep(0.1)
    await asyncio.wait_for(done.wait(), 120)
    for t in tasks:
        t.cancel()
    summary(f"publish -> receive, {subscribers} subscribers", latencies)
    for c in clients + [publisher]:
        await c.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--fanout", type=int, default=1000)
    parser.add_argument("--fanout-events", type=int, default=30)
    args = parser.parse_args()
    redis_port, port = free_port(), free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no"],
                             stdout=subprocess.DEVNULL)
    wait_port(redis_port)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSTATE_")}
    env.update(FLOWSTATE_REDIS__URL=f"redis://127.0.0.1:{redis_port}", FLOWSTATE_SERVER__LISTEN=f"127.0.0.1:{port}",
               FLOWSTATE_METRICS__ENABLED="false", FLOWSTATE_LOG__LEVEL="error",
               FLOWSTATE_SERVER__MAX_CONCURRENT_REQUESTS="4096")
    server = subprocess.Popen([str(ROOT / "target/release/flowstate")], env=env)
    try:
        wait_port(port)
        target = f"127.0.0.1:{port}"
        lock_wakeups(target, args.rounds)
        one_subscriber(target, args.events)
        asyncio.run(fanout(target, args.fanout, args.fanout_events))
    finally:
        server.terminate()
        server.wait(10)
        redis.kill()
        redis.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
