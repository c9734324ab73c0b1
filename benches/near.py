#!/usr/bin/env python3
"""The near cache's figures (BENCHMARKS.md), measured side by side in one run:

    python3 benches/near.py [--rounds 3] [--seconds 3] [--trials 1000]

(needs the Python client: pip install ./clients/python; redis-server, redis-tools, nghttp2-client).
Starts a private redis-server and release flowstate processes on it: `near` (namespace `bench`
with `near = true`), `plain` (the same without), and a second near replica `near-b` sharing
`near`'s keys. Then:
  1. h2load, 16 connections, rounds rotating the order: cache Get of a hot key on `near` and
     `plain`, `grpc.health.v1.Health/Check` on `near` (the cost of gRPC itself), and
     redis-benchmark GET -c 16 on the same Redis;
  2. Redis commands per hot Get: INFO commandstats around 10,000 Gets on `near`;
  3. one caller (flowstate-bench --concurrency 1, cache-get): p50/p99 on `near` and `plain`;
  4. coherence: --trials times, Set a new value through `near`, then Get through `near-b` until
     it answers it; the window from the Set's return to the first new answer (p50, p99, max),
     against `cache.near_max_staleness`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from run import OUT, ROOT, free_port, grpc_frame, h2load, h2load_bodies, rotating_rounds, terminate, wait_port

STALENESS = "1s"


def start(redis_port: int, prefix: str, near: bool) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSTATE_")}
    env.update(FLOWSTATE_REDIS__URL=f"redis://127.0.0.1:{redis_port}", FLOWSTATE_SERVER__LISTEN=f"127.0.0.1:{port}",
               FLOWSTATE_METRICS__ENABLED="false", FLOWSTATE_LOG__LEVEL="warn", FLOWSTATE_REDIS__KEY_PREFIX=prefix,
               FLOWSTATE_CACHE__NAMESPACES__BENCH__TTL="1h", FLOWSTATE_CACHE__NEAR_MAX_STALENESS=STALENESS,
               FLOWSTATE_CACHE__NAMESPACES__BENCH__NEAR="true" if near else "false")
    proc = subprocess.Popen([str(ROOT / "target/release/flowstate")], env=env)
    wait_port(port)
    return proc, port


def commandstats(port: int) -> dict[str, int]:
    out = subprocess.run(["redis-cli", "-p", str(port), "INFO", "commandstats"], capture_output=True, text=True,
                         check=True).stdout
    stats = {}
    for line in out.splitlines():
        if line.startswith("cmdstat_"):
            name, rest = line[len("cmdstat_"):].split(":", 1)
            stats[name] = int(rest.split("calls=")[1].split(",")[0])
    return stats


def one_caller(port: int, seconds: float) -> dict:
    out = subprocess.run(
        [str(ROOT / "target/release/flowstate-bench"), "--addr", f"127.0.0.1:{port}", "--concurrency", "1",
         "--duration", str(seconds), "--scenarios", "cache-get"],
        capture_output=True, text=True, check=True,
    ).stdout
    (row,) = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return row


def redis_get(port: int, seconds: float) -> float:
    out = subprocess.run(
        ["redis-benchmark", "-p", str(port), "-c", "16", "-n", str(int(seconds * 70_000)), "-t", "get", "--csv"],
        capture_output=True, text=True, check=True,
    ).stdout
    return float(out.splitlines()[1].split(",")[1].strip('"'))


def coherence(a: int, b: int, trials: int) -> list[float]:
    import flowstate

    windows = []
    with flowstate.Client(f"127.0.0.1:{a}") as fa, flowstate.Client(f"127.0.0.1:{b}") as fb:
        fa.cache.set("bench", "coherent", b"v0")
        for i in range(1, trials + 1):
            fb.cache.get("bench", "coherent")  # B holds the current value near
            fb.cache.get("bench", "coherent")
            want = f"v{i}".encode()
            fa.cache.set("bench", "coherent", want)
            t0 = time.perf_counter()
            while fb.cache.get("bench", "coherent").value != want:
                if time.perf_counter() - t0 > 5:
                    raise SystemExit(f"trial {i}: B still serves the old value after 5 s")
            windows.append(time.perf_counter() - t0)
    return windows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--trials", type=int, default=1000)
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    rport = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL)
    procs = {}
    try:
        wait_port(rport)
        procs["near"] = start(rport, "near", True)
        procs["near-b"] = start(rport, "near", True)
        procs["plain"] = start(rport, "plain", False)
        path, body = h2load_bodies()["cache-get"]
        health = OUT / "health.grpc"
        health.write_bytes(grpc_frame(b""))
        # The hot key (flowstate-bench's fixture writes it too, 100 bytes).
        for name in ("near", "plain"):
            one_caller(procs[name][1], 0.5)
        runs = {
            "near": lambda: h2load(procs["near"][1], path, body, 16, args.seconds),
            "plain": lambda: h2load(procs["plain"][1], path, body, 16, args.seconds),
            "health": lambda: h2load(procs["near"][1], "/grpc.health.v1.Health/Check", health, 16, args.seconds),
            "redis GET": lambda: redis_get(rport, args.seconds),
        }
        names = list(runs)
        rates = rotating_rounds(runs, args.rounds)
        med = {n: statistics.median(v) for n, v in rates.items()}
        print(f"\nh2load -c 16 / redis-benchmark -c 16, medians of {args.rounds} rounds:")
        for n in names:
            print(f"  {n:>10}: {med[n]:>9,.0f} req/s")
        print(f"  near Get / Health/Check: {med['near'] / med['health']:.2f}")
        print(f"  near Get / redis-benchmark GET: {med['near'] / med['redis GET']:.2f}")
        print(f"  near Get / plain Get: {med['near'] / med['plain']:.2f}")

        before = commandstats(rport)
        subprocess.run(["h2load", "-n", "10000", "-c", "4", "-m", "4", "-d", str(body), "-H",
                        "content-type: application/grpc", "-H", "te: trailers",
                        f"http://127.0.0.1:{procs['near'][1]}{path}"], capture_output=True, check=True)
        after = commandstats(rport)
        delta = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
        # The health probes of three replicas run meanwhile (a SET each per second), and INFO.
        data = {k: v for k, v in delta.items() if k not in ("set", "info", "ping")}
        print(f"\nRedis commands during 10,000 hot Gets on near: {delta} "
              f"-> {sum(data.values()) / 10_000:.4f} data commands per Get")

        for name in ("near", "plain"):
            row = one_caller(procs[name][1], args.seconds)
            print(f"one caller, {name:>5}: p50 {row['p50_us']} µs, p99 {row['p99_us']} µs, {row['rps']:,.0f}/s")

        windows = sorted(coherence(procs["near"][1], procs["near-b"][1], args.trials))
        ms = [w * 1000 for w in windows]
        q = lambda p: ms[min(len(ms) - 1, int(p * len(ms)))]  # noqa: E731
        print(f"\ncoherence, {args.trials} trials (Set on A, Get on B until new): window p50 {q(0.5):.2f} ms, "
              f"p99 {q(0.99):.2f} ms, max {ms[-1]:.2f} ms; bound cache.near_max_staleness = {STALENESS}")
    finally:
        terminate(*(proc for proc, _ in procs.values()), redis)
    return 0


if __name__ == "__main__":
    sys.exit(main())
