//! Generated protobuf and gRPC code for `flowstate.v1`.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// `flowstate.v1` messages, clients and servers.
pub mod v1 {
    tonic::include_proto!("flowstate.v1");
}

/// Encoded `FileDescriptorSet` of every flowstate proto (with comments), served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/flowstate_descriptor.bin"));
