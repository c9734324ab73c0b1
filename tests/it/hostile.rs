//! Hostile input through the real server: for every method of every flowstate service (read
//! from the descriptors, so a new service is covered without edits here), random bodies of
//! three kinds are sent as raw gRPC messages:
//! - valid protobuf of the method's request type with random field values (strings of odd
//!   characters and lengths, huge and negative numbers, unknown enum values, nested messages,
//!   random maps and lists);
//! - such messages with bytes flipped, cut short or duplicated;
//! - random bytes.
//!
//! Every reply must be a proper gRPC status from the expected set (INTERNAL only for a body
//! that is not protobuf, as the gRPC status code spec assigns), the server must stay healthy
//! (no panic), and a refused request must change nothing in Redis (`DEBUG DIGEST` before and
//! after). The seed is printed; `FLOWSTATE_TEST_HOSTILE_CASES` runs more cases.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use crate::common::{RedisServer, TestServer, raw::Raw, test_config};
use bytes::Bytes;
use flowstate::{
    auth::{keys, permission::Permissions},
    config::{AuthMode, PositiveDuration},
    tenant::Tenant,
};
use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, Kind, MapKey, MessageDescriptor, ServiceDescriptor, Value,
};
use rand::{Rng, RngCore, SeedableRng, rngs::StdRng};
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;

/// Strings that tend to break things: separators, braces, Unicode, NUL, long runs.
fn odd_string(rng: &mut StdRng) -> String {
    const PIECES: &[&str] = &[
        "",
        "a",
        "{",
        "}",
        ":",
        "*",
        "%",
        "\\",
        "\"",
        "\0",
        "é",
        "😀",
        " ",
        "\n",
        "..",
        "_",
        "default",
        "fs",
        "user-42",
        "ns",
        "team:7",
        "ALGORITHM_GCRA",
    ];
    let mut s = String::new();
    let pieces = match rng.random_range(0..10) {
        0 => 0,
        1 => rng.random_range(50..2000),
        _ => rng.random_range(1..6),
    };
    for _ in 0..pieces {
        s.push_str(PIECES[rng.random_range(0..PIECES.len())]);
    }
    s
}

fn odd_i64(rng: &mut StdRng) -> i64 {
    match rng.random_range(0..6) {
        0 => 0,
        1 => -1,
        2 => i64::MAX,
        3 => i64::MIN,
        4 => rng.random_range(-100..100_000),
        _ => rng.random(),
    }
}

fn random_value(rng: &mut StdRng, kind: &Kind, depth: usize) -> Value {
    match kind {
        Kind::Double => Value::F64(rng.random::<f64>() * 1e12 - 5e11),
        Kind::Float => Value::F32(rng.random()),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(odd_i64(rng) as i32),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(odd_i64(rng)),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(odd_i64(rng) as u32),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(odd_i64(rng) as u64),
        Kind::Bool => Value::Bool(rng.random()),
        Kind::String => Value::String(odd_string(rng)),
        Kind::Bytes => {
            let mut b = vec![0u8; rng.random_range(0..64)];
            rng.fill_bytes(&mut b);
            Value::Bytes(Bytes::from(b))
        }
        Kind::Enum(e) => {
            let values: Vec<i32> = e.values().map(|v| v.number()).collect();
            Value::EnumNumber(if rng.random_bool(0.8) && !values.is_empty() {
                values[rng.random_range(0..values.len())]
            } else {
                rng.random_range(-5..50)
            })
        }
        Kind::Message(m) => Value::Message(random_message(rng, m, depth + 1)),
    }
}

fn random_message(rng: &mut StdRng, desc: &MessageDescriptor, depth: usize) -> DynamicMessage {
    let mut msg = DynamicMessage::new(desc.clone());
    if depth > 3 {
        return msg;
    }
    for field in desc.fields() {
        if rng.random_bool(0.3) {
            continue;
        }
        let value = if field.is_map() {
            let Kind::Message(entry) = field.kind() else {
                continue;
            };
            let (k, v) = (entry.map_entry_key_field(), entry.map_entry_value_field());
            let mut map = HashMap::new();
            for _ in 0..rng.random_range(0..4) {
                let key = match random_value(rng, &k.kind(), depth) {
                    Value::String(s) => MapKey::String(s),
                    Value::I32(i) => MapKey::I32(i),
                    Value::I64(i) => MapKey::I64(i),
                    Value::U32(i) => MapKey::U32(i),
                    Value::U64(i) => MapKey::U64(i),
                    Value::Bool(b) => MapKey::Bool(b),
                    _ => continue,
                };
                map.insert(key, random_value(rng, &v.kind(), depth));
            }
            Value::Map(map)
        } else if field.is_list() {
            Value::List(
                (0..rng.random_range(0..5))
                    .map(|_| random_value(rng, &field.kind(), depth))
                    .collect(),
            )
        } else {
            random_value(rng, &field.kind(), depth)
        };
        msg.set_field(&field, value);
    }
    msg
}

fn mutate(rng: &mut StdRng, mut body: Vec<u8>) -> Vec<u8> {
    match rng.random_range(0..4) {
        0 if !body.is_empty() => {
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..body.len());
                body[i] ^= 1 << rng.random_range(0..8);
            }
        }
        1 if !body.is_empty() => body.truncate(rng.random_range(0..body.len())),
        2 => body.extend(body.clone()),
        _ => {
            let i = rng.random_range(0..=body.len());
            body.insert(i, rng.random());
        }
    }
    body
}

/// The outcomes a hostile request may get.
fn acceptable(status: &Status) -> bool {
    match status.code() {
        Code::InvalidArgument
        | Code::NotFound
        | Code::Aborted
        | Code::FailedPrecondition
        | Code::ResourceExhausted
        | Code::Unauthenticated
        | Code::PermissionDenied => true,
        // The gRPC status code spec: a request that is not protobuf is INTERNAL. Nothing else is.
        Code::Internal => status
            .message()
            .starts_with("failed to decode Protobuf message"),
        _ => false,
    }
}

/// A refusal: the request was turned away before it could change anything.
fn refused(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::Unauthenticated
            | Code::PermissionDenied
            | Code::ResourceExhausted
            | Code::Internal
    )
}

async fn digest(conn: &mut redis::aio::MultiplexedConnection) -> String {
    redis::cmd("DEBUG")
        .arg("DIGEST")
        .query_async(conn)
        .await
        .expect("DEBUG DIGEST")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_and_mutated_requests_get_proper_statuses_and_change_nothing_when_refused() {
    let cases: usize = std::env::var("FLOWSTATE_TEST_HOSTILE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let seed: u64 = std::env::var("FLOWSTATE_TEST_HOSTILE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("hostile input: {cases} cases, seed {seed} (FLOWSTATE_TEST_HOSTILE_SEED)");
    let mut rng = StdRng::seed_from_u64(seed);

    let redis = RedisServer::start_with(&["--enable-debug-command", "yes"]).await;
    let mut admin = redis.client().await;
    // Keys with TTLs must not expire between two digests.
    let _: () = redis::cmd("DEBUG")
        .arg("SET-ACTIVE-EXPIRE")
        .arg(0)
        .query_async(&mut admin)
        .await
        .expect("active expire off");
    let key = keys::generate(
        &Tenant::new("acme").expect("tenant"),
        Permissions::parse("*").expect("permissions"),
    );
    let mut config = test_config();
    config.redis.url = Some(redis.url());
    config.auth.mode = AuthMode::Required;
    config.auth.keys = Some(key.line.clone());
    // The health probe writes a key: once at start, then not during the run.
    config.redis.health_interval =
        PositiveDuration::new(Duration::from_secs(3600)).expect("positive");
    let server = TestServer::start(config).await;
    assert!(
        server
            .wait_health("readiness", ServingStatus::Serving)
            .await
    );

    let pool = DescriptorPool::decode(flowstate::proto::FILE_DESCRIPTOR_SET).expect("descriptors");
    // Every service of the set: flowstate's own and Envoy's rate limit service.
    let services: Vec<ServiceDescriptor> = pool.services().collect();
    let methods: Vec<_> = services.iter().flat_map(|s| s.methods()).collect();
    assert!(methods.len() >= 17, "{} methods", methods.len());

    let mut grpc = tonic::client::Grpc::new(server.channel.clone());
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for case in 0..cases {
        let method = &methods[rng.random_range(0..methods.len())];
        let body = match rng.random_range(0..10) {
            0..=5 => random_message(&mut rng, &method.input(), 0).encode_to_vec(),
            6..=8 => {
                let valid = random_message(&mut rng, &method.input(), 0).encode_to_vec();
                mutate(&mut rng, valid)
            }
            _ => {
                let mut b = vec![0u8; rng.random_range(0..200)];
                rng.fill_bytes(&mut b);
                b
            }
        };
        let path = format!("/{}/{}", method.parent_service().full_name(), method.name());
        let mut request = tonic::Request::new(body.clone());
        if rng.random_bool(0.95) {
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {}", key.key).parse().expect("header"),
            );
        }
        // A valid Subscribe streams until its deadline: keep that short.
        let streaming = method.is_server_streaming();
        request.set_timeout(Duration::from_secs(if streaming { 1 } else { 5 }));
        let before = digest(&mut admin).await;
        grpc.ready().await.expect("server reachable");
        let reply = grpc
            .unary::<Vec<u8>, Vec<u8>, Raw>(request, path.parse().expect("path"), Raw)
            .await;
        let code = match &reply {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        };
        *outcomes.entry(format!("{code:?}")).or_default() += 1;
        if let Err(status) = &reply {
            let lived = streaming && status.code() == Code::DeadlineExceeded;
            if !acceptable(status) && !lived {
                failures.push(format!(
                    "case {case} {path}: {status:?} for body {:02x?}",
                    &body[..body.len().min(64)]
                ));
            }
            if refused(status.code()) && digest(&mut admin).await != before {
                failures.push(format!(
                    "case {case} {path}: refused with {code:?} but changed the store"
                ));
            }
        }
        if failures.len() > 5 {
            break;
        }
    }
    assert!(
        server
            .wait_health("readiness", ServingStatus::Serving)
            .await,
        "the server survived"
    );
    eprintln!("outcomes of {cases} hostile requests: {outcomes:?}");
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(
        outcomes.get("Ok").copied().unwrap_or(0) > 0,
        "some random requests were valid"
    );
    assert!(outcomes.get("InvalidArgument").copied().unwrap_or(0) > cases / 10);
}
