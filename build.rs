//! Compiles `proto/` with protox (pure Rust, no system `protoc`) and writes the descriptor set
//! that server reflection serves, so `grpcurl describe` shows the commented API.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let protos = [
        "proto/flowstate/v1/session.proto",
        "proto/flowstate/v1/cache.proto",
        "proto/flowstate/v1/ratelimit.proto",
        "proto/flowstate/v1/lock.proto",
        "proto/flowstate/v1/events.proto",
        "proto/flowstate/v1/queue.proto",
        "proto/flowstate/v1/usage.proto",
        "proto/flowstate/v1/semantic.proto",
        // Envoy's rate limit service (vendored, trimmed), served beside flowstate's own.
        "proto/envoy/service/ratelimit/v3/rls.proto",
    ];
    let fds = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out.join("flowstate_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
