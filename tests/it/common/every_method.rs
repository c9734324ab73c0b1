//! Every method of every registered service, called through the real server with a request
//! built from its descriptor: each field set, caller data to a recognisable secret and names
//! to a chosen name. The suites that must cover every service (exposure, isolation, script
//! slots) drive this, so a new service in `flowstate::services::ALL` is covered without edits.

use std::time::Duration;

use bytes::Bytes;
use flowstate::{
    config::{Config, LimitConfig, SemanticNamespace},
    ratelimit::{Algorithm, FailureMode},
};
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MapKey, MessageDescriptor, Value};
use tonic::{Status, transport::Channel};

use super::{raw::Raw, with_key};

/// Fields whose value is a name from the configuration (a namespace, a named limit, a queue, a
/// topic, a metric, an RLS domain): logs and metric labels may show these. Every other string
/// or bytes field is caller data.
pub const NAME_FIELDS: &[&str] = &[
    "namespace",
    "name",
    "queue",
    "topic",
    "metric",
    "domain",
    "pattern",
    "limit",
];

/// Configures `name` wherever a call needs a configured name to get past validation: a named
/// rate limit, and a semantic namespace of dimension 1 (a filled request has one of each list).
pub fn configure(c: &mut Config, name: &str) {
    c.ratelimit.limits.insert(
        name.into(),
        LimitConfig {
            algorithm: Algorithm::FixedWindow,
            limit: 100,
            period: Duration::from_secs(3600),
            burst: 0,
            failure_mode: FailureMode::Closed,
        },
    );
    c.semantic.namespaces.insert(
        name.into(),
        SemanticNamespace {
            dimension: 1,
            ..SemanticNamespace::default()
        },
    );
}

/// Maps keyed by names rather than by caller data: `after` is topic → event id.
const NAME_KEYED_MAPS: &[&str] = &["after"];

/// What one call sent and got.
pub struct Call {
    /// `/service/method`.
    pub path: String,
    /// The caller data it carried.
    pub secret: String,
    /// The reply body, or the status.
    pub reply: Result<Vec<u8>, Status>,
}

/// A value of `kind` for a field called `field`.
fn value(kind: &Kind, field: &str, name: &str, secret: &str, depth: usize) -> Option<Value> {
    Some(match kind {
        Kind::String if NAME_FIELDS.contains(&field) => Value::String(name.into()),
        Kind::String => Value::String(secret.into()),
        Kind::Bytes => Value::Bytes(Bytes::from(secret.as_bytes().to_vec())),
        Kind::Double => Value::F64(0.5),
        Kind::Float => Value::F32(0.5),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(1),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(1),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(1),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(1),
        Kind::Bool => Value::Bool(true),
        Kind::Enum(e) => Value::EnumNumber(e.values().map(|v| v.number()).max().unwrap_or(0)),
        Kind::Message(m) if depth < 3 => Value::Message(message(m, name, secret, depth + 1)),
        Kind::Message(_) => return None,
    })
}

/// A message with every field set (one element per list and map, the last member of a oneof).
pub fn message(desc: &MessageDescriptor, name: &str, secret: &str, depth: usize) -> DynamicMessage {
    let mut msg = DynamicMessage::new(desc.clone());
    for field in desc.fields() {
        let set = if field.is_map() {
            let Kind::Message(entry) = field.kind() else {
                continue;
            };
            let (k, v) = (entry.map_entry_key_field(), entry.map_entry_value_field());
            let (Kind::String, Some(v)) = (
                k.kind(),
                value(&v.kind(), field.name(), name, secret, depth),
            ) else {
                continue;
            };
            let key = if NAME_KEYED_MAPS.contains(&field.name()) {
                name
            } else {
                secret
            };
            Value::Map([(MapKey::String(key.into()), v)].into())
        } else {
            let Some(v) = value(&field.kind(), field.name(), name, secret, depth) else {
                continue;
            };
            if field.is_list() {
                Value::List(vec![v])
            } else {
                v
            }
        };
        msg.set_field(&field, set);
    }
    msg
}

/// Calls every method of every registered service once as the caller of `key` (none: with
/// authentication off), names set to
/// `name` and caller data to `secret(method index)`. A streaming method gets a one-second
/// deadline and answers with its first message.
pub async fn call_every_method(
    channel: &Channel,
    key: Option<&str>,
    name: &str,
    secret: impl Fn(usize) -> String,
) -> Vec<Call> {
    let pool = DescriptorPool::decode(flowstate::proto::FILE_DESCRIPTOR_SET).expect("descriptors");
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    let mut calls = Vec::new();
    for service in flowstate::services::ALL {
        let descriptor = pool
            .get_service_by_name(service.name())
            .unwrap_or_else(|| panic!("{} is not in the descriptors", service.name()));
        for method in descriptor.methods() {
            let secret = secret(calls.len());
            let body = message(&method.input(), name, &secret, 0).encode_to_vec();
            let mut request = match key {
                Some(key) => with_key(body, key),
                None => tonic::Request::new(body),
            };
            let streaming = method.is_server_streaming();
            request.set_timeout(Duration::from_secs(if streaming { 1 } else { 5 }));
            let path = format!("/{}/{}", service.name(), method.name());
            grpc.ready().await.expect("server reachable");
            let reply = grpc
                .unary::<Vec<u8>, Vec<u8>, Raw>(request, path.parse().expect("path"), Raw)
                .await
                .map(tonic::Response::into_inner);
            calls.push(Call {
                path,
                secret,
                reply,
            });
        }
    }
    assert!(calls.len() >= 40, "{} methods called", calls.len());
    calls
}
