#!/usr/bin/env python3
"""Reproduces every figure in BENCHMARKS.md in one run on this machine:

    python3 benches/run.py [--seconds 4] [--concurrency 16 64]

Starts a private redis-server and a release flowstate (Redis store) on free loopback ports, then
for each concurrency:
  1. flowstate-bench, closed loop, every scenario: throughput and HdrHistogram percentiles;
  2. flowstate-bench, open loop at half of each scenario's closed-loop throughput: the p99 a
     service sees when it is not saturated (latency counted from the intended send time);
  3. h2load (an independent, lighter HTTP/2 load tool) on cache Get and rate-limit Check;
  4. redis-benchmark at the same concurrency: GET, SET and EVALSHA of flowstate's own rate-limit
     script, against the same Redis;
then flowstate's resident memory, the Python client's latency (clients/python/examples/latency.py,
when the `flowstate` package is importable: pip install ./clients/python) and the criterion
micro-benchmarks. Prints the tables and writes target/bench/results.json.
Ratios within one run are the figures to quote: the machine is shared and absolute numbers move.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "target" / "bench"
SCENARIOS = ["session-get", "session-create", "cache-get", "cache-set", "ratelimit-check", "ratelimit-check2"]
BASELINE = {
    "session-get": "GET",
    "session-create": "SET",
    "cache-get": "GET",
    "cache-set": "SET",
    "ratelimit-check": "EVALSHA",
    "ratelimit-check2": "EVALSHA",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number: int, wire: int, payload: bytes) -> bytes:
    key = varint((number << 3) | wire)
    return key + (varint(len(payload)) + payload if wire == 2 else payload)


def grpc_frame(message: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(message)) + message


def h2load_bodies() -> dict[str, tuple[str, pathlib.Path]]:
    """gRPC request bodies for h2load, encoded by hand (no protobuf runtime needed)."""
    cache_get = field(1, 2, b"bench") + field(2, 2, b"hot")
    duration = field(1, 0, varint(3600))
    policy = field(1, 0, varint(4)) + field(2, 0, varint(100_000_000)) + field(3, 2, duration)
    check = field(1, 2, field(2, 2, policy) + field(3, 2, b"user-1"))
    bodies = {}
    for name, path, msg in [
        ("cache-get", "/flowstate.v1.CacheService/Get", cache_get),
        ("ratelimit-check", "/flowstate.v1.RateLimitService/Check", check),
    ]:
        f = OUT / f"{name}.grpc"
        f.write_bytes(grpc_frame(msg))
        bodies[name] = (path, f)
    return bodies


def bench(addr: str, conc: int, seconds: float, rate: float = 0.0, scenarios=SCENARIOS) -> dict:
    cmd = [
        str(ROOT / "target/release/flowstate-bench"),
        "--addr", addr,
        "--concurrency", str(conc),
        "--duration", str(seconds),
        "--scenarios", ",".join(scenarios),
        "--rate", str(rate),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return {r["scenario"]: r for r in (json.loads(l) for l in out.splitlines() if l.startswith("{"))}


def h2load(port: int, path: str, body: pathlib.Path, conc: int, seconds: float) -> float:
    streams = max(1, conc // 16)
    conns = conc // streams
    out = subprocess.run(
        ["h2load", "-D", str(max(1, round(seconds))), "-c", str(conns), "-m", str(streams), "-t", "1",
         "-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers",
         f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, check=True,
    ).stdout
    m = re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out)
    failed = re.search(r"(\d+) failed", out)
    if not m or (failed and int(failed.group(1))):
        raise SystemExit(f"h2load failed:\n{out}")
    return float(m.group(1))


def terminate(*procs: subprocess.Popen) -> None:
    """Stops processes this script started (SIGTERM, then waits)."""
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=15)


def rotating_rounds(runs: dict, rounds: int) -> dict[str, list[float]]:
    """Runs every measurement of `runs` (name -> a function returning a rate) once per round,
    the order rotating each round so a busy neighbour hits all alike; prints each round and
    returns the rates by name."""
    names = list(runs)
    rates: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        row = {n: runs[n]() for n in order}
        for n, v in row.items():
            rates[n].append(v)
        print(f"round {r + 1}: " + "  ".join(f"{n} {row[n]:,.0f}/s" for n in names), flush=True)
    return rates


def check_script(driver: str) -> str:
    """flowstate's rate-limit script as the server loads it (clock + algorithm + driver)."""
    lua = ROOT / "src"
    return "".join([
        (lua / "store/redis/lua/clock.lua").read_text(),
        (lua / "ratelimit/lua/algorithm.lua").read_text(),
        driver,
    ])


def redis_benchmark(port: int, conc: int, seconds: float) -> dict[str, dict]:
    def load(source: str) -> str:
        return subprocess.run(
            ["redis-cli", "-p", str(port), "-x", "SCRIPT", "LOAD"],
            input=source, capture_output=True, text=True, check=True,
        ).stdout.strip()

    # The production script reads Redis TIME; the second variant is handed the time as its last
    # argument (as flowstate did before the store clock), so the pair shows what TIME costs.
    sha = load(check_script((ROOT / "src/ratelimit/lua/check.lua").read_text()))
    sha_now = load(check_script("\nreturn run_check(tonumber(ARGV[#ARGV]))\n"))
    n = str(int(seconds * 70_000))
    # One key; ARGV: commit, then the counter's algorithm (GCRA), limit, period, capacity, cost
    # and role (enforced), as src/ratelimit/redis.rs sends them.
    counter = ["1", "bench:rl:{user-__rand_int__}", "1", "4", "100000000", "3600000", "100000000", "1", "0"]
    runs = [
        (None, ["-t", "get,set"]),
        ("EVALSHA", ["EVALSHA", sha, *counter]),
        ("EVALSHA-NOW", ["EVALSHA", sha_now, *counter, "1763000000000"]),
    ]
    results = {}
    for label, extra in runs:
        out = subprocess.run(
            ["redis-benchmark", "-p", str(port), "-c", str(conc), "-n", n, "-r", "1000", "--csv", *extra],
            capture_output=True, text=True, check=True,
        ).stdout
        for row in csv.DictReader(io.StringIO(out)):
            results[label or row["test"].split()[0].upper()] = {
                "rps": float(row["rps"]),
                "p50_us": float(row["p50_latency_ms"]) * 1000,
                "p99_us": float(row["p99_latency_ms"]) * 1000,
            }
    return results


def rss_mib(pid: int) -> tuple[float, float]:
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    get = lambda k: int(re.search(rf"{k}:\s+(\d+) kB", status).group(1)) / 1024  # noqa: E731
    return get("VmRSS"), get("VmHWM")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    args = ap.parse_args()
    for tool in ["redis-server", "redis-benchmark", "redis-cli", "h2load"]:
        if not shutil.which(tool):
            raise SystemExit(f"{tool} missing: apt-get install redis-server redis-tools nghttp2-client")
    OUT.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cargo", "build", "--release", "--quiet", "--features", "bench", "--bin", "flowstate", "--bin", "flowstate-bench"],
                   cwd=ROOT, check=True)
    bodies = h2load_bodies()

    rport, fport = free_port(), free_port()
    procs = []
    try:
        procs.append(subprocess.Popen(
            ["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL))
        wait_port(rport)
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSTATE_")}
        env.update(FLOWSTATE_REDIS__URL=f"redis://127.0.0.1:{rport}", FLOWSTATE_SERVER__LISTEN=f"127.0.0.1:{fport}",
                   FLOWSTATE_METRICS__ENABLED="false", FLOWSTATE_LOG__LEVEL="warn")
        server = subprocess.Popen([str(ROOT / "target/release/flowstate")], env=env)
        procs.append(server)
        wait_port(fport)
        addr = f"127.0.0.1:{fport}"
        results = {"machine": {"cpus": os.cpu_count()}, "runs": {}}
        for conc in args.concurrency:
            closed = bench(addr, conc, args.seconds)
            half = {}
            for s, r in closed.items():
                half[s] = bench(addr, conc, args.seconds, rate=r["rps"] / 2, scenarios=[s])[s]
            h2 = {s: h2load(fport, path, body, conc, args.seconds) for s, (path, body) in bodies.items()}
            redis = redis_benchmark(rport, conc, args.seconds)
            results["runs"][conc] = {"closed": closed, "half_load": half, "h2load": h2, "redis": redis}

            print(f"\n== concurrency {conc}: flowstate-bench (closed loop) vs redis-benchmark, same Redis, same run")
            print(f"{'scenario':<17}{'req/s':>9}{'p50 µs':>8}{'p99 µs':>8}{'redis op':>9}{'redis/s':>9}{'ratio':>7}"
                  f"{'h2load/s':>10}{'ratio':>7}   {'at 50% load: rate':>17}{'p50':>6}{'p99 µs':>8}")
            for s in SCENARIOS:
                c, h, op = closed[s], half[s], BASELINE[s]
                base = redis[op]["rps"]
                h2_cell = f"{h2[s]:>10.0f}{h2[s] / base:>7.1%}" if s in h2 else " " * 17
                print(f"{s:<17}{c['rps']:>9.0f}{c['p50_us']:>8}{c['p99_us']:>8}{op:>9}{base:>9.0f}{c['rps'] / base:>7.1%}"
                      f"{h2_cell}   {h['rps']:>17.0f}{h['p50_us']:>6}{h['p99_us']:>8}")
            t, n = redis["EVALSHA"], redis["EVALSHA-NOW"]
            print(f"the store clock: rate-limit script reading TIME {t['rps']:.0f}/s (p50 {t['p50_us']:.0f} µs) vs "
                  f"handed the time {n['rps']:.0f}/s (p50 {n['p50_us']:.0f} µs): {t['rps'] / n['rps']:.1%}")
        rss, hwm = rss_mib(server.pid)
        results["memory_mib"] = {"rss": rss, "peak": hwm}
        print(f"\nflowstate resident memory after the runs: {rss:.1f} MiB (peak {hwm:.1f} MiB)")

        print("\n== Python client latency (clients/python/examples/latency.py)")
        try:
            import flowstate  # noqa: F401
        except ImportError:
            print("skipped: pip install ./clients/python to include it")
        else:
            py = subprocess.run([sys.executable, str(ROOT / "clients/python/examples/latency.py"), addr,
                                 str(max(1.0, args.seconds / 2))], capture_output=True, text=True, check=True)
            print(py.stdout, end="")
            results["python"] = py.stdout

        print("\n== criterion micro-benchmarks (cargo bench --bench micro)")
        micro = subprocess.run(["cargo", "bench", "--quiet", "--bench", "micro", "--",
                                "--warm-up-time", "1", "--measurement-time", "2"],
                               cwd=ROOT, capture_output=True, text=True, check=True).stdout
        lines = [l.strip() for l in micro.splitlines() if "time:" in l]
        print("\n".join(lines))
        results["micro"] = lines
        (OUT / "results.json").write_text(json.dumps(results, indent=2))
        print(f"results: {OUT / 'results.json'}")
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
