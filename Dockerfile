# syntax=docker/dockerfile:1
# flowstate container image: a release build on Debian, copied into distroless (no shell, no
# package manager, non-root). Build: docker build -t flowstate .
# Ports: 50051 gRPC (grpc.health.v1 for probes), 9464 Prometheus /metrics.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so code changes do not rebuild them.
COPY Cargo.toml Cargo.lock build.rs ./
# Build flags (x86-64-v2: see .cargo/config.toml).
COPY .cargo .cargo
COPY proto proto
RUN mkdir -p src/bin && echo 'fn main() {}' > src/main.rs && echo 'fn main() {}' > src/bin/flowstate-bench.rs \
    && touch src/lib.rs && cargo build --release --locked --bin flowstate && rm -rf src
COPY src src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin flowstate \
    && cp target/release/flowstate /flowstate

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /flowstate /usr/local/bin/flowstate
# Bind all interfaces inside the container; the defaults are loopback for laptops.
ENV FLOWSTATE_SERVER__LISTEN=0.0.0.0:50051 \
    FLOWSTATE_METRICS__LISTEN=0.0.0.0:9464 \
    FLOWSTATE_LOG__FORMAT=json
EXPOSE 50051 9464
USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/flowstate"]
CMD ["serve"]
