#!/usr/bin/env python3
"""Envoy's rate limit service and usage ingest, measured against Redis itself in one run:

    python3 benches/rls_usage.py [--seconds 5] [--concurrency 16]

Starts a private redis-server and release flowstate builds (Redis store) on free loopback ports:
  1. ShouldRateLimit, one descriptor under a rule it never exceeds, with h2load, against
     redis-benchmark EVALSHA of the same script (`ratelimit.check` as the server loads it, one
     fixed-window counter) at the same concurrency;
  2. a workload almost wholly over its limit (1 per hour: every request after the first is
     refused), with the over-limit cache (the default) and without it
     (`rls.local_cache_entries = 0`): requests per second and store calls per request
     (INFO commandstats);
  3. UsageService Record with h2load, 100 events of 100 subjects per call (nothing to sum) and
     1,000 events of 50 subjects (summed to 50 scripts), in events per second; and 1,000,000
     events through the Python client's buffer (needs `pip install ./clients/python`), against
     redis-benchmark HINCRBY with pipelining (-P 16) at the same concurrency.
Prints the tables and writes target/bench/rls_usage.json. Quote the ratios: the machine is
shared and the load generators, flowstate and Redis share its cores.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from run import OUT, ROOT, check_script, field, free_port, grpc_frame, h2load, varint, wait_port  # noqa: E402

RULES = """
domain: bench
descriptors:
  - key: user
    rate_limit: {unit: hour, requests_per_unit: 4000000000}
  - key: banned
    rate_limit: {unit: hour, requests_per_unit: 1}
"""


def rls_body(key: str, value: str) -> bytes:
    entry = field(1, 2, key.encode()) + field(2, 2, value.encode())
    return field(1, 2, b"bench") + field(2, 2, field(1, 2, entry))


def record_body(events: int, subjects: int) -> bytes:
    msg = b""
    for i in range(events):
        event = field(1, 2, b"bench_tokens") + field(2, 2, f"ws-{i % subjects}".encode()) + field(3, 0, varint(3))
        msg += field(1, 2, event)
    return msg


def body_file(name: str, message: bytes) -> pathlib.Path:
    f = OUT / f"{name}.grpc"
    f.write_bytes(grpc_frame(message))
    return f


def redis_cli(port: int, *args: str, input: str | None = None) -> str:
    return subprocess.run(["redis-cli", "-p", str(port), *args], input=input, capture_output=True, text=True,
                          check=True).stdout.strip()


def evalsha_calls(port: int) -> int:
    for line in redis_cli(port, "INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_evalsha:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


def redis_benchmark(port: int, conc: int, n: int, *args: str) -> float:
    out = subprocess.run(["redis-benchmark", "-p", str(port), "-c", str(conc), "-n", str(n), "--csv", *args],
                         capture_output=True, text=True, check=True).stdout
    return float(next(csv.DictReader(io.StringIO(out)))["rps"])


def start_flowstate(redis_port: int, rules: pathlib.Path, cache_entries: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSTATE_")}
    env.update(
        FLOWSTATE_REDIS__URL=f"redis://127.0.0.1:{redis_port}",
        FLOWSTATE_SERVER__LISTEN=f"127.0.0.1:{port}",
        FLOWSTATE_METRICS__LISTEN=f"127.0.0.1:{free_port()}",
        FLOWSTATE_LOG__LEVEL="warn",
        FLOWSTATE_RLS__CONFIG_PATH=str(rules),
        FLOWSTATE_RLS__LOCAL_CACHE_ENTRIES=str(cache_entries),
        FLOWSTATE_REDIS__KEY_PREFIX=f"bench{cache_entries}",
    )
    proc = subprocess.Popen([str(ROOT / "target/release/flowstate")], env=env)
    wait_port(port)
    return proc, port


def python_buffer(port: int, events: int) -> float | None:
    """Events per second through the Python client's buffer, flushes included."""
    code = f"""
import time, flowstate
with flowstate.Client("127.0.0.1:{port}", timeout=10) as fs:
    t = time.monotonic()
    for i in range({events}):
        fs.usage.record("bench_py", "ws-" + str(i % 50), 3)
    fs.usage.flush()
    print({events} / (time.monotonic() - t))
"""
    python = ROOT / "target/ci-venv/bin/python"
    out = subprocess.run([str(python if python.exists() else sys.executable), "-c", code],
                         capture_output=True, text=True)
    return float(out.stdout.strip()) if out.returncode == 0 else None


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--concurrency", type=int, default=16)
    args = p.parse_args()
    conc, seconds = args.concurrency, args.seconds
    OUT.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cargo", "build", "--release", "--bin", "flowstate"], cwd=ROOT, check=True)
    rules = pathlib.Path(tempfile.mkdtemp()) / "rules.yaml"
    rules.write_text(RULES)
    redis_port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL)
    wait_port(redis_port)
    procs = [redis]
    results: dict = {"concurrency": conc, "seconds": seconds}
    try:
        cached, port = start_flowstate(redis_port, rules, 100_000)
        uncached, port_nc = start_flowstate(redis_port, rules, 0)
        procs += [cached, uncached]
        rls = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
        within = body_file("rls-within", rls_body("user", "alice"))
        over = body_file("rls-over", rls_body("banned", "mallory"))

        # 1. Within the limit vs EVALSHA of the same script.
        sha = redis_cli(redis_port, "-x", "SCRIPT", "LOAD",
                        input=check_script((ROOT / "src/ratelimit/lua/check.lua").read_text()))
        n = int(seconds * 60_000)
        evalsha = redis_benchmark(redis_port, conc, n, "EVALSHA", sha, "1", "bench:rls:{user=alice}", "1", "1",
                                  "4000000000", "3600000", "4000000000", "1", "0")
        should = h2load(port, rls, within, conc, seconds)
        results["within"] = {"should_rate_limit": should, "evalsha": evalsha}

        # 2. Mostly over the limit, with and without the over-limit cache.
        for name, p_ in [("over_cached", port), ("over_uncached", port_nc)]:
            before = evalsha_calls(redis_port)
            rps = h2load(p_, rls, over, conc, seconds)
            calls = evalsha_calls(redis_port) - before
            results[name] = {"rps": rps, "store_calls_per_request": calls / max(1.0, rps * round(seconds))}

        # 3. Usage ingest vs HINCRBY -P 16.
        hincrby = redis_benchmark(redis_port, conc, n * 4, "-P", "16", "HINCRBY", "bench:h", "f", "1")
        rec = "/flowstate.v1.UsageService/Record"
        spread = h2load(port, rec, body_file("record-100x100", record_body(100, 100)), conc, seconds) * 100
        summed = h2load(port, rec, body_file("record-1000x50", record_body(1000, 50)), conc, seconds) * 1000
        py = python_buffer(port, 1_000_000)
        results["usage"] = {"hincrby_p16": hincrby, "record_100_events_100_subjects": spread,
                            "record_1000_events_50_subjects": summed, "python_buffer_1m": py}
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()

    w = results["within"]
    print(f"\n== ShouldRateLimit vs redis-benchmark EVALSHA of the same script, {conc} concurrent, same run")
    print(f"ShouldRateLimit (h2load)      {w['should_rate_limit']:>10,.0f} req/s")
    print(f"EVALSHA ratelimit.check       {w['evalsha']:>10,.0f} /s")
    print(f"ratio                         {w['should_rate_limit'] / w['evalsha']:>10.2f}")
    c, u = results["over_cached"], results["over_uncached"]
    print("\n== a workload over its limit (every request after the first refused)")
    print(f"with the over-limit cache     {c['rps']:>10,.0f} req/s   {c['store_calls_per_request']:.4f} store calls/request")
    print(f"without it                    {u['rps']:>10,.0f} req/s   {u['store_calls_per_request']:.4f} store calls/request")
    print(f"ratio                         {c['rps'] / u['rps']:>10.2f}")
    us = results["usage"]
    print(f"\n== usage ingest vs redis-benchmark -P 16 HINCRBY ({conc} clients), same run")
    print(f"HINCRBY -P 16                 {us['hincrby_p16']:>10,.0f} /s")
    for label, key in [("Record 100 ev / 100 subjects", "record_100_events_100_subjects"),
                       ("Record 1000 ev / 50 subjects", "record_1000_events_50_subjects"),
                       ("Python buffer, 1M events", "python_buffer_1m")]:
        v = us[key]
        if v is None:
            print(f"{label:<30}{'(flowstate package not importable)':>12}")
        else:
            print(f"{label:<30}{v:>10,.0f} events/s   ratio {v / us['hincrby_p16']:.2f}")
    (OUT / "rls_usage.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
