//! Authentication and authorization through the real server: API keys, permissions, the keys
//! file reloaded without a restart, per-tenant request quotas, and what needs no key (health,
//! reflection).

use std::{collections::HashMap, time::Duration};

use crate::common::{TestServer, eventually, raw::Raw, test_config, with_key};
use flowstate::{
    auth::{
        keys,
        permission::{self, Permission, Permissions},
    },
    config::{AuthMode, Config, PositiveDuration},
    proto::v1 as pb,
    tenant::Tenant,
};
use pb::{
    cache_service_client::CacheServiceClient, rate_limit_service_client::RateLimitServiceClient,
};
use tonic::{Code, Request};
use tonic_health::pb::health_check_response::ServingStatus;

fn key(tenant: &str, allow: &str) -> keys::NewKey {
    keys::generate(
        &Tenant::new(tenant).expect("tenant"),
        Permissions::parse(allow).expect("permissions"),
    )
}

fn auth_config(lines: &[&str]) -> Config {
    let mut c = test_config();
    c.auth.mode = AuthMode::Required;
    c.auth.keys = Some(lines.join("\n"));
    c
}

fn get_req(key: &str) -> pb::CacheGetRequest {
    pb::CacheGetRequest {
        namespace: "ns".into(),
        key: key.into(),
        lease: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_needs_a_listed_key_with_the_permission() {
    let reader = key("acme", "cache:read");
    let writer = key("acme", "cache:*,sessions:read");
    let server = TestServer::start(auth_config(&[&reader.line, &writer.line])).await;
    assert!(
        server
            .wait_health("readiness", ServingStatus::Serving)
            .await,
        "health needs no key"
    );
    let mut c = CacheServiceClient::new(server.channel.clone());

    let none = c.get(Request::new(get_req("k"))).await.expect_err("no key");
    assert_eq!(none.code(), Code::Unauthenticated, "{none:?}");
    // A well-formed key that is not listed, a listed id with a wrong secret, a non-bearer
    // scheme: all UNAUTHENTICATED, and none says which part was wrong.
    let forged = format!("{}x", &reader.key[..reader.key.len() - 1]);
    let stranger = key("acme", "*").key;
    for presented in [stranger.as_str(), forged.as_str()] {
        let err = c
            .get(with_key(get_req("k"), presented))
            .await
            .expect_err("not listed");
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
        assert_eq!(err.message(), none.message());
    }
    let mut basic = Request::new(get_req("k"));
    basic.metadata_mut().insert(
        "authorization",
        format!("Basic {}", reader.key).parse().expect("header"),
    );
    assert_eq!(
        c.get(basic).await.expect_err("not bearer").code(),
        Code::Unauthenticated
    );

    c.get(with_key(get_req("k"), &reader.key))
        .await
        .expect("cache:read may read");
    let denied = c
        .set(with_key(
            pb::CacheSetRequest {
                namespace: "ns".into(),
                key: "k".into(),
                value: bytes::Bytes::from_static(b"v"),
                ..Default::default()
            },
            &reader.key,
        ))
        .await
        .expect_err("cache:read may not write");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("cache:write"), "{denied:?}");
    c.set(with_key(
        pb::CacheSetRequest {
            namespace: "ns".into(),
            key: "k".into(),
            value: bytes::Bytes::from_static(b"v"),
            ..Default::default()
        },
        &writer.key,
    ))
    .await
    .expect("cache:* may write");
    let rl = RateLimitServiceClient::new(server.channel.clone())
        .reset(with_key(
            pb::ResetRequest {
                key: "k".into(),
                limit: Some(pb::reset_request::Limit::Name("any".into())),
            },
            &writer.key,
        ))
        .await
        .expect_err("no ratelimit permission");
    assert_eq!(rl.code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_needs_no_key_and_can_be_switched_off() {
    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest,
    };
    let list = |channel| async move {
        ServerReflectionClient::new(channel)
            .server_reflection_info(tokio_stream::iter([ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            }]))
            .await
    };
    let k = key("acme", "*");
    let on = TestServer::start(auth_config(&[&k.line])).await;
    assert!(on.wait_health("", ServingStatus::Serving).await);
    let mut replies = list(on.channel.clone())
        .await
        .expect("reflection on")
        .into_inner();
    assert!(replies.message().await.expect("reply").is_some());

    let mut config = auth_config(&[&k.line]);
    config.server.reflection = false;
    let off = TestServer::start(config).await;
    assert!(off.wait_health("", ServingStatus::Serving).await);
    let err = list(off.channel.clone()).await.expect_err("reflection off");
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
}

/// Replaces `path`'s contents at once, as a Kubernetes Secret update does (a new file renamed
/// over the old): a write in place can be read half done by the reloader, which then takes a
/// truncated file for the new keys.
fn replace_file(path: &std::path::Path, contents: impl AsRef<[u8]>) {
    let next = path.with_extension("next");
    std::fs::write(&next, contents).expect("write");
    std::fs::rename(&next, path).expect("rename");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_file_change_takes_effect_without_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keys");
    let first = key("acme", "cache:read");
    let second = key("acme", "cache:read");
    std::fs::write(&path, format!("# flowstate keys\n{}\n", first.line)).expect("write");
    let mut config = test_config();
    config.auth.mode = AuthMode::Required;
    config.auth.keys_file = Some(path.clone());
    config.auth.reload_interval =
        PositiveDuration::new(Duration::from_millis(100)).expect("positive");
    let server = TestServer::start(config).await;
    assert!(
        server
            .wait_health("readiness", ServingStatus::Serving)
            .await
    );
    let c = CacheServiceClient::new(server.channel.clone());
    let works = |key: String| {
        let mut c = c.clone();
        async move { c.get(with_key(get_req("k"), &key)).await.map(|_| ()) }
    };
    works(first.key.clone()).await.expect("listed key");
    assert_eq!(
        works(second.key.clone()).await.expect_err("not yet").code(),
        Code::Unauthenticated
    );

    // Added: accepted within a few reload intervals.
    replace_file(&path, format!("{}\n{}\n", first.line, second.line));
    assert!(
        eventually(Duration::from_secs(10), || {
            let k = second.key.clone();
            async move { works(k).await.is_ok() }
        })
        .await,
        "the added key was never accepted"
    );
    // A broken file keeps the keys in force.
    replace_file(&path, "this is not a keys file\n");
    tokio::time::sleep(Duration::from_millis(500)).await;
    works(second.key.clone()).await.expect("old keys kept");
    // Removed: refused within a few reload intervals.
    replace_file(&path, format!("{}\n", second.line));
    assert!(
        eventually(Duration::from_secs(10), || {
            let k = first.key.clone();
            async move { works(k).await.is_err() }
        })
        .await,
        "the removed key still works"
    );
    works(second.key.clone()).await.expect("the kept key works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_keys_file_stops_start_up_naming_the_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keys");
    let good = key("acme", "*");
    std::fs::write(&path, format!("{}\nabc def\n", good.line)).expect("write");
    let mut config = test_config();
    config.auth.mode = AuthMode::Required;
    config.auth.keys_file = Some(path.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let err = flowstate::server::run(config, listener, std::future::pending())
        .await
        .expect_err("bad keys file");
    let text = format!("{err:#}");
    assert!(text.contains(&format!("{}:2:", path.display())), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenant_has_its_own_request_quota() {
    let a = key("a", "cache:read");
    let b = key("b", "cache:read");
    let mut config = auth_config(&[&a.line, &b.line]);
    config.quota.requests_per_second = 5;
    let server = TestServer::start(config).await;
    assert!(
        server
            .wait_health("readiness", ServingStatus::Serving)
            .await
    );
    let mut c = CacheServiceClient::new(server.channel.clone());
    let mut refused = 0;
    for _ in 0..30 {
        match c.get(with_key(get_req("k"), &a.key)).await {
            Ok(_) => {}
            Err(e) if e.code() == Code::ResourceExhausted => refused += 1,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(refused >= 20, "only {refused} of 30 refused at 5/s");
    c.get(with_key(get_req("k"), &b.key))
        .await
        .expect("tenant b has its own quota");
    assert_eq!(
        server.health_status("readiness").await,
        ServingStatus::Serving,
        "health is never counted"
    );
}

/// Sends `message` (encoded) to `path` with `key` (if any); the status code of the reply.
async fn call_raw(server: &TestServer, path: &str, body: Vec<u8>, key: Option<&str>) -> Code {
    let mut grpc = tonic::client::Grpc::new(server.channel.clone());
    let mut request = Request::new(body);
    if let Some(key) = key {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {key}").parse().expect("header"),
        );
    }
    grpc.ready().await.expect("server reachable");
    match grpc
        .unary::<Vec<u8>, Vec<u8>, Raw>(request, path.parse().expect("path"), Raw)
        .await
    {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

/// The whole permission table, method by method, read from the descriptors (a new method is
/// covered without edits here): no key is UNAUTHENTICATED, a key with every permission but the
/// method's is PERMISSION_DENIED, a key with only the method's permission gets through (its
/// empty request may then be invalid, but it is not refused by auth). The two flags that write
/// need the write permission as well, and a path that is no method is UNIMPLEMENTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_needs_exactly_its_permission() {
    use prost::Message as _;
    use prost_reflect::{DescriptorPool, DynamicMessage, Value};

    let only: HashMap<Permission, keys::NewKey> = permission::ALL
        .iter()
        .map(|(p, name)| (*p, key("acme", name)))
        .collect();
    let all_but: HashMap<Permission, keys::NewKey> = permission::ALL
        .iter()
        .map(|(p, _)| {
            let rest: Vec<&str> = permission::ALL
                .iter()
                .filter(|(q, _)| q != p)
                .map(|(_, n)| *n)
                .collect();
            (*p, key("acme", &rest.join(",")))
        })
        .collect();
    let everything = key("acme", "*");
    let lines: Vec<&str> = only
        .values()
        .chain(all_but.values())
        .chain([&everything])
        .map(|k| k.line.as_str())
        .collect();
    let server = TestServer::start(auth_config(&lines)).await;

    let table: HashMap<String, Permission> = flowstate::services::permissions()
        .iter()
        .flat_map(|(service, methods)| {
            methods
                .iter()
                .map(move |(m, p)| (format!("/{service}/{m}"), *p))
        })
        .collect();
    let pool = DescriptorPool::decode(flowstate::proto::FILE_DESCRIPTOR_SET).expect("descriptors");
    let mut checked = 0;
    // Every service of the set: flowstate's own and Envoy's rate limit service.
    for method in pool
        .services()
        .flat_map(|s| s.methods().collect::<Vec<_>>())
    {
        let path = format!("/{}/{}", method.parent_service().full_name(), method.name());
        let needed = *table
            .get(&path)
            .unwrap_or_else(|| panic!("{path} has no permission in the table"));
        let empty = DynamicMessage::new(method.input()).encode_to_vec();
        assert_eq!(
            call_raw(&server, &path, empty.clone(), None).await,
            Code::Unauthenticated,
            "{path} without a key"
        );
        assert_eq!(
            call_raw(&server, &path, empty.clone(), Some(&all_but[&needed].key)).await,
            Code::PermissionDenied,
            "{path} with every permission but {needed}"
        );
        let code = call_raw(&server, &path, empty, Some(&only[&needed].key)).await;
        assert!(
            !matches!(code, Code::Unauthenticated | Code::PermissionDenied),
            "{path} with only {needed}: {code:?}"
        );
        checked += 1;
    }
    assert_eq!(checked, table.len(), "every method in the table was called");

    // Flags that write need the write permission too.
    let flagged = |path: &str, field: &str| {
        let method = pool
            .services()
            .flat_map(|s| s.methods().collect::<Vec<_>>())
            .find(|m| format!("/{}/{}", m.parent_service().full_name(), m.name()) == path)
            .expect("method");
        let mut message = DynamicMessage::new(method.input());
        message.set_field_by_name(field, Value::Bool(true));
        message.encode_to_vec()
    };
    let reader_writer = key("acme", "sessions:read,cache:read");
    let both = key("acme", "sessions:*,cache:*");
    let server = TestServer::start(auth_config(&[&reader_writer.line, &both.line])).await;
    for (path, field) in [
        ("/flowstate.v1.SessionService/GetSession", "touch"),
        ("/flowstate.v1.CacheService/Get", "lease"),
    ] {
        assert_eq!(
            call_raw(
                &server,
                path,
                flagged(path, field),
                Some(&reader_writer.key)
            )
            .await,
            Code::PermissionDenied,
            "{path} with {field} and read only"
        );
        let code = call_raw(&server, path, flagged(path, field), Some(&both.key)).await;
        assert!(
            !matches!(code, Code::Unauthenticated | Code::PermissionDenied),
            "{path} with {field} and read+write: {code:?}"
        );
    }
    assert_eq!(
        call_raw(
            &server,
            "/flowstate.v1.CacheService/NoSuchMethod",
            Vec::new(),
            Some(&both.key)
        )
        .await,
        Code::Unimplemented
    );
}
