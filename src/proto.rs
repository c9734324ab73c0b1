//! Generated protobuf and gRPC code for `flowstate.v1`, and the service table read from the
//! descriptor sets (so metrics and health learn a new service from its proto alone).

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// `flowstate.v1` messages, clients and servers.
pub mod v1 {
    tonic::include_proto!("flowstate.v1");
}

/// Envoy's rate limit service (`envoy.service.ratelimit.v3`) and the messages it uses, nested as
/// their packages are (the generated code refers to them by relative paths).
pub mod envoy {
    pub mod service {
        pub mod ratelimit {
            pub mod v3 {
                tonic::include_proto!("envoy.service.ratelimit.v3");
            }
        }
    }
    pub mod extensions {
        pub mod common {
            pub mod ratelimit {
                pub mod v3 {
                    tonic::include_proto!("envoy.extensions.common.ratelimit.v3");
                }
            }
        }
    }
    pub mod config {
        pub mod core {
            pub mod v3 {
                tonic::include_proto!("envoy.config.core.v3");
            }
        }
    }
    pub mod r#type {
        pub mod v3 {
            tonic::include_proto!("envoy.r#type.v3");
        }
    }
}

/// Encoded `FileDescriptorSet` of every flowstate proto (with comments), served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/flowstate_descriptor.bin"));

/// A gRPC service this server serves: its full name and its methods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Full name, e.g. `flowstate.v1.SessionService`.
    pub name: String,
    /// Method names, e.g. `CreateSession`.
    pub methods: Vec<String>,
}

/// The services declared in an encoded `FileDescriptorSet`, in declaration order. A set that
/// does not decode (impossible for the ones compiled into this binary) yields none.
pub fn services(encoded: &[u8]) -> Vec<ServiceInfo> {
    let Ok(set) = <prost_types::FileDescriptorSet as prost::Message>::decode(encoded) else {
        return Vec::new();
    };
    set.file
        .iter()
        .flat_map(|file| {
            let package = file.package().to_owned();
            file.service.iter().map(move |s| ServiceInfo {
                name: if package.is_empty() {
                    s.name().to_owned()
                } else {
                    format!("{package}.{}", s.name())
                },
                methods: s.method.iter().map(|m| m.name().to_owned()).collect(),
            })
        })
        .collect()
}

/// flowstate's own services (every one of them is backed by the store).
pub fn flowstate_services() -> Vec<ServiceInfo> {
    services(FILE_DESCRIPTOR_SET)
}

/// Every service this server answers: flowstate's, health and both reflection versions.
pub fn all_services() -> Vec<ServiceInfo> {
    [
        FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ]
    .into_iter()
    .flat_map(services)
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_table_comes_from_the_descriptors() {
        let ours = flowstate_services();
        let session = ours
            .iter()
            .find(|s| s.name == "flowstate.v1.SessionService")
            .expect("session service");
        assert!(session.methods.iter().any(|m| m == "CreateSession"));
        let all = all_services();
        for name in [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ] {
            assert!(all.iter().any(|s| s.name == name), "{name}");
        }
    }
}
