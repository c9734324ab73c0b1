"""Latency of the Python client from a loop of real calls: cache.get and a rate-limit check,
sync and asyncio, 1 and 16 concurrent callers.

    python examples/latency.py 127.0.0.1:50051 [seconds-per-case]
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from datetime import timedelta

from flowstate import AsyncClient, Client, Limit

LIMIT = Limit("gcra", limit=100_000_000, period=timedelta(hours=1))


def summarize(name: str, callers: int, samples: list[float], seconds: float) -> None:
    samples.sort()
    p = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))] * 1e6  # noqa: E731
    print(
        f"{name:<28}{callers:>4}{len(samples) / seconds:>10.0f}/s"
        f"  p50 {p(0.5):>6.0f} µs  p99 {p(0.99):>6.0f} µs  (n={len(samples)})"
    )


def sync_case(target: str, name: str, callers: int, seconds: float) -> None:
    with Client(target) as fs:
        fs.cache.set("latency", "hot", b"x" * 100, ttl=timedelta(hours=1))
        op = {
            "cache.get": lambda i: fs.cache.get("latency", "hot"),
            "ratelimit.check": lambda i: fs.ratelimit.check([(LIMIT, f"user-{i % 1000}")]),
        }[name]
        samples: list[list[float]] = [[] for _ in range(callers)]
        end = time.monotonic() + seconds

        def worker(w: int) -> None:
            i = w
            while time.monotonic() < end:
                t0 = time.perf_counter()
                op(i)
                samples[w].append(time.perf_counter() - t0)
                i += callers

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(callers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    summarize(f"sync  {name}", callers, [s for w in samples for s in w], seconds)


async def async_case(target: str, name: str, callers: int, seconds: float) -> None:
    async with AsyncClient(target) as fs:
        await fs.cache.set("latency", "hot", b"x" * 100, ttl=timedelta(hours=1))
        op = {
            "cache.get": lambda i: fs.cache.get("latency", "hot"),
            "ratelimit.check": lambda i: fs.ratelimit.check([(LIMIT, f"user-{i % 1000}")]),
        }[name]
        samples: list[float] = []
        end = time.monotonic() + seconds

        async def worker(w: int) -> None:
            i = w
            while time.monotonic() < end:
                t0 = time.perf_counter()
                await op(i)
                samples.append(time.perf_counter() - t0)
                i += callers

        await asyncio.gather(*(worker(w) for w in range(callers)))
    summarize(f"async {name}", callers, samples, seconds)


def main() -> None:
    target = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 3.0
    print(f"{'case':<28}{'conc':>4}{'rate':>12}")
    for name in ["cache.get", "ratelimit.check"]:
        for callers in [1, 16]:
            sync_case(target, name, callers, seconds)
            asyncio.run(async_case(target, name, callers, seconds))


if __name__ == "__main__":
    main()
