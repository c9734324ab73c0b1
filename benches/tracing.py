#!/usr/bin/env python3
"""What tracing costs, measured side by side in one run:

    target/ci-venv/bin/python benches/tracing.py [--baseline OLD_BIN] [--rounds 5] [--seconds 3]

Starts a private redis-server, an OTLP/gRPC sink (accepts and counts exports without decoding
them, like a collector that keeps up) and release flowstate processes on the same Redis:
  - `off`:   tracing off (the default);
  - `on-0`:  tracing on, sample_ratio 0 (spans opened, none recorded: the price of the layer);
  - `on-100`: tracing on, sample_ratio 1 (every call and store round trip exported);
  - `before` (with --baseline): a build without tracing at all, e.g. from the commit before it
    (`git worktree add /tmp/base <rev> && cd /tmp/base && cargo build --release`).
Each round runs h2load (16 connections, one stream each) on cache Get against every process in
turn, the order rotating per round, so a busy neighbour hits all alike. Prints every round, the
medians and their ratios to `off`, and the spans the sink received. Needs h2load
(nghttp2-client) and grpcio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
from concurrent import futures

import grpc

from run import OUT, ROOT, free_port, h2load, h2load_bodies, rotating_rounds, terminate, wait_port


class Sink:
    """Accepts OTLP exports without decoding them (decoding would take CPU from the processes
    measured: this machine has two cores); counts requests and bytes."""

    def __init__(self) -> None:
        self.exports = 0
        self.bytes = 0
        self._lock = threading.Lock()

    def export(self, request: bytes, context) -> bytes:
        with self._lock:
            self.exports += 1
            self.bytes += len(request)
        return b""  # an empty ExportTraceServiceResponse

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            "opentelemetry.proto.collector.trace.v1.TraceService",
            {"Export": grpc.unary_unary_rpc_method_handler(self.export)},
        )


def start(binary: str, redis_port: int, prefix: str, extra: dict[str, str]) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSTATE_")}
    env.update(FLOWSTATE_REDIS__URL=f"redis://127.0.0.1:{redis_port}", FLOWSTATE_SERVER__LISTEN=f"127.0.0.1:{port}",
               FLOWSTATE_METRICS__ENABLED="false", FLOWSTATE_LOG__LEVEL="warn", FLOWSTATE_REDIS__KEY_PREFIX=prefix,
               **extra)
    proc = subprocess.Popen([binary], env=env)
    wait_port(port)
    return proc, port


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", help="a release flowstate built without tracing")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    binary = str(ROOT / "target/release/flowstate")
    sink = Sink()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((sink.handler(),))
    sink_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    rport = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL)
    procs: dict[str, tuple[subprocess.Popen, int]] = {}
    try:
        wait_port(rport)
        otlp = {"FLOWSTATE_TRACING__OTLP_ENDPOINT": f"http://127.0.0.1:{sink_port}",
                "FLOWSTATE_TRACING__MAX_QUEUE_SIZE": "65536"}
        variants = {
            "off": (binary, {}),
            "on-0": (binary, {**otlp, "FLOWSTATE_TRACING__SAMPLE_RATIO": "0"}),
            "on-100": (binary, {**otlp, "FLOWSTATE_TRACING__SAMPLE_RATIO": "1"}),
        }
        if args.baseline:
            variants["before"] = (args.baseline, {})
        for name, (path, extra) in variants.items():
            procs[name] = start(path, rport, f"bench-{name}", extra)
        OUT.mkdir(parents=True, exist_ok=True)
        path, body = h2load_bodies()["cache-get"]
        names = list(procs)
        rates = rotating_rounds(
            {n: (lambda n=n: h2load(procs[n][1], path, body, args.concurrency, args.seconds)) for n in names},
            args.rounds,
        )
        medians = {n: statistics.median(v) for n, v in rates.items()}
        print(f"\ncache Get, h2load -c {args.concurrency}, median of {args.rounds} rounds of {args.seconds:g} s:")
        for n in names:
            print(f"  {n:>7}: {medians[n]:>9,.0f} req/s   ratio to off {medians[n] / medians['off']:.2f}")
        print(f"OTLP exports received: {sink.exports:,} ({sink.bytes / 2**20:,.0f} MiB)")
    finally:
        terminate(*(proc for proc, _ in procs.values()), redis)
        server.stop(grace=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
