//! Tenant isolation, service by service, on both stores: two tenants using the same user ids,
//! the same cache namespaces, keys and tags, and the same limits and limit keys never see,
//! change, delete, invalidate, reset or exhaust each other's state.
//!
//! And for every method of every registered service (`common::every_method`, so a new service
//! is covered without edits here): both tenants call it with the same names (a configured one
//! and crafted ones), every key a call writes lies in its caller's key space, and no reply to
//! one tenant carries the other's data.

use std::sync::LazyLock;

use crate::common::{
    Backend,
    every_method::{self, call_every_method},
    with_key,
};
use bytes::Bytes;
use flowstate::{
    auth::{keys, permission::Permissions},
    config::{AuthMode, Config, LimitConfig},
    proto::v1 as pb,
    ratelimit::{Algorithm, FailureMode},
    tenant::Tenant,
};
use pb::{
    cache_service_client::CacheServiceClient, event_service_client::EventServiceClient,
    lock_service_client::LockServiceClient, queue_service_client::QueueServiceClient,
    rate_limit_service_client::RateLimitServiceClient,
    session_service_client::SessionServiceClient, subscribe_response::Kind,
    usage_service_client::UsageServiceClient,
};
use tonic::Code;

contract_tests! {
    sessions_are_invisible_across_tenants with super::two_tenants,
    cache_entries_are_invisible_across_tenants with super::two_tenants,
    counters_are_separate_across_tenants with super::two_tenants,
    locks_are_separate_across_tenants with super::two_tenants,
    topics_are_separate_across_tenants with super::two_tenants,
    queues_are_separate_across_tenants with super::two_tenants,
    usage_is_separate_across_tenants with super::two_tenants,
    envoy_rate_limits_are_separate_across_tenants with super::two_tenants,
}

contract_tests! {
    stores [every_method_redis: redis, slow_every_method_cluster: cluster]
    tests [every_method_stays_in_its_tenants_key_space with super::two_tenants_and_probe]
}

fn two_tenants_and_probe(c: &mut Config) {
    two_tenants(c);
    every_method::configure(c, "probe");
}

async fn every_method_stays_in_its_tenants_key_space(b: Backend) {
    let channel = b.server.channel.clone();
    let mut seen = std::collections::BTreeSet::new();
    let mut calls = 0;
    for name in ["probe", "{probe}", "beta:probe", "alpha/probe}:x", "*"] {
        for (tenant, key, other) in [("alpha", alpha(), "beta"), ("beta", beta(), "alpha")] {
            let replies =
                call_every_method(&channel, Some(key), name, |m| format!("{tenant}SECRET{m}x"))
                    .await;
            for call in &replies {
                if let Ok(body) = &call.reply {
                    let leak = format!("{other}SECRET");
                    assert!(
                        !body.windows(leak.len()).any(|w| w == leak.as_bytes()),
                        "{tenant}'s {} with name {name:?} answered with {other}'s data",
                        call.path
                    );
                }
            }
            calls += replies.len();
            let own = format!("{}:{tenant}:", b.prefix);
            for written in b.redis_keys().await {
                if seen.insert(written.clone()) {
                    assert!(
                        written.starts_with(&own),
                        "{tenant}'s calls with name {name:?} wrote {written:?}, outside {own:?}"
                    );
                }
            }
        }
    }
    assert!(
        seen.len() > 20,
        "the calls wrote {} keys in {calls} calls",
        seen.len()
    );
}

/// Keys for tenants `alpha` and `beta`, every permission each.
static KEYS: LazyLock<[keys::NewKey; 2]> = LazyLock::new(|| {
    ["alpha", "beta"].map(|t| {
        keys::generate(
            &Tenant::new(t).expect("tenant"),
            Permissions::parse("*").expect("permissions"),
        )
    })
});

fn alpha() -> &'static str {
    &KEYS[0].key
}

fn beta() -> &'static str {
    &KEYS[1].key
}

fn two_tenants(c: &mut Config) {
    c.auth.mode = AuthMode::Required;
    c.auth.keys = Some(format!("{}\n{}", KEYS[0].line, KEYS[1].line));
    c.ratelimit.limits.insert(
        "login".into(),
        LimitConfig {
            algorithm: Algorithm::FixedWindow,
            limit: 3,
            period: std::time::Duration::from_secs(3600),
            burst: 0,
            failure_mode: FailureMode::Closed,
        },
    );
    let dir = tempfile::tempdir().expect("tempdir").keep();
    let rules = dir.join("rules.yaml");
    std::fs::write(
        &rules,
        "domain: edge\ndescriptors:\n  - key: user\n    rate_limit: {unit: hour, requests_per_unit: 2}\n",
    )
    .expect("rules");
    c.rls.config_path = Some(rules);
}

async fn sessions_are_invisible_across_tenants(b: Backend) {
    let mut c = SessionServiceClient::new(b.server.channel.clone());
    let created = c
        .create_session(with_key(
            pb::CreateSessionRequest {
                user_id: "alice".into(),
                data: [("cart".to_owned(), Bytes::from_static(b"alpha's"))].into(),
                ..Default::default()
            },
            alpha(),
        ))
        .await
        .expect("create")
        .into_inner();
    let code =
        |r: Result<tonic::Response<pb::Session>, tonic::Status>| r.map(|_| ()).unwrap_err().code();
    // Beta holds alpha's secret id: still nothing (the key is tenant-scoped).
    let get = c
        .get_session(with_key(
            pb::GetSessionRequest {
                id: created.id.clone(),
                touch: true,
            },
            beta(),
        ))
        .await;
    assert_eq!(code(get), Code::NotFound);
    let update = c
        .update_session(with_key(
            pb::UpdateSessionRequest {
                id: created.id.clone(),
                set: [("cart".to_owned(), Bytes::from_static(b"beta's"))].into(),
                ..Default::default()
            },
            beta(),
        ))
        .await;
    assert_eq!(code(update), Code::NotFound);
    let rotate = c
        .rotate_session(with_key(
            pb::RotateSessionRequest {
                id: created.id.clone(),
            },
            beta(),
        ))
        .await;
    assert_eq!(code(rotate), Code::NotFound);
    let touch = c
        .touch_session(with_key(
            pb::TouchSessionRequest {
                id: created.id.clone(),
            },
            beta(),
        ))
        .await;
    assert_eq!(code(touch), Code::NotFound);
    let listed = c
        .list_user_sessions(with_key(
            pb::ListUserSessionsRequest {
                user_id: "alice".into(),
            },
            beta(),
        ))
        .await
        .expect("list")
        .into_inner()
        .sessions;
    assert!(listed.is_empty(), "beta sees alpha's alice: {listed:?}");
    let deleted = c
        .delete_session(with_key(
            pb::DeleteSessionRequest {
                target: Some(pb::delete_session_request::Target::Handle(
                    created.handle.clone(),
                )),
            },
            beta(),
        ))
        .await
        .expect("delete by handle")
        .into_inner()
        .deleted;
    assert!(!deleted);
    let logged_out = c
        .delete_user_sessions(with_key(
            pb::DeleteUserSessionsRequest {
                user_id: "alice".into(),
                keep_handle: None,
            },
            beta(),
        ))
        .await
        .expect("delete user")
        .into_inner()
        .deleted;
    assert_eq!(logged_out, 0);
    // Alpha's session is untouched: same data, same version.
    let own = c
        .get_session(with_key(
            pb::GetSessionRequest {
                id: created.id.clone(),
                touch: false,
            },
            alpha(),
        ))
        .await
        .expect("alpha still has it")
        .into_inner();
    assert_eq!(own.data["cart"].as_ref(), b"alpha's");
    assert_eq!(own.version, 1);
    // Alpha's listing shows it, without its data.
    let listed = c
        .list_user_sessions(with_key(
            pb::ListUserSessionsRequest {
                user_id: "alice".into(),
            },
            alpha(),
        ))
        .await
        .expect("list")
        .into_inner()
        .sessions;
    assert_eq!(listed.len(), 1);
    assert!(
        listed[0].data.is_empty() && listed[0].id.is_empty(),
        "{listed:?}"
    );
}

async fn cache_entries_are_invisible_across_tenants(b: Backend) {
    let mut c = CacheServiceClient::new(b.server.channel.clone());
    let set = |value: &'static [u8]| pb::CacheSetRequest {
        namespace: "user_profile".into(),
        key: "u1".into(),
        value: Bytes::from_static(value),
        tags: vec!["team:7".into()],
        ..Default::default()
    };
    let get = || pb::CacheGetRequest {
        namespace: "user_profile".into(),
        key: "u1".into(),
        lease: false,
    };
    c.set(with_key(set(b"alpha"), alpha())).await.expect("set");
    let seen = c
        .get(with_key(get(), beta()))
        .await
        .expect("get")
        .into_inner();
    assert!(!seen.found, "beta reads alpha's entry");
    // Beta's own entry under the same name does not touch alpha's.
    c.set(with_key(set(b"beta"), beta())).await.expect("set");
    let invalidated = c
        .invalidate_tags(with_key(
            pb::CacheInvalidateTagsRequest {
                namespace: "user_profile".into(),
                tags: vec!["team:7".into()],
            },
            beta(),
        ))
        .await
        .expect("invalidate tags")
        .into_inner()
        .invalidated;
    assert_eq!(invalidated, 1, "only beta's own entry");
    c.invalidate_namespace(with_key(
        pb::CacheInvalidateNamespaceRequest {
            namespace: "user_profile".into(),
        },
        beta(),
    ))
    .await
    .expect("invalidate namespace");
    let deleted = c
        .delete(with_key(
            pb::CacheDeleteRequest {
                namespace: "user_profile".into(),
                keys: vec!["u1".into()],
            },
            beta(),
        ))
        .await
        .expect("delete")
        .into_inner()
        .deleted;
    assert_eq!(deleted, 0);
    let many = c
        .get_many(with_key(
            pb::CacheGetManyRequest {
                namespace: "user_profile".into(),
                keys: vec!["u1".into()],
            },
            beta(),
        ))
        .await
        .expect("get many")
        .into_inner()
        .entries;
    assert!(!many[0].found);
    let own = c
        .get(with_key(get(), alpha()))
        .await
        .expect("get")
        .into_inner();
    assert!(own.found, "alpha's entry survived everything beta did");
    assert_eq!(own.value.as_ref(), b"alpha");
}

async fn counters_are_separate_across_tenants(b: Backend) {
    let mut c = RateLimitServiceClient::new(b.server.channel.clone());
    let check = || pb::CheckRequest {
        checks: vec![pb::LimitCheck {
            limit: Some(pb::limit_check::Limit::Name("login".into())),
            key: "alice".into(),
        }],
        ..Default::default()
    };
    // Beta exhausts "login" for alice.
    for _ in 0..3 {
        assert!(
            c.check(with_key(check(), beta()))
                .await
                .expect("check")
                .into_inner()
                .allowed
        );
    }
    assert!(
        !c.check(with_key(check(), beta()))
            .await
            .expect("check")
            .into_inner()
            .allowed
    );
    // Alpha's alice is untouched by beta's.
    let own = c
        .check(with_key(check(), alpha()))
        .await
        .expect("check")
        .into_inner();
    assert!(own.allowed && own.results[0].remaining == 2, "{own:?}");
    for _ in 0..2 {
        c.check(with_key(check(), alpha())).await.expect("check");
    }
    // Beta's Reset lifts beta's limit only.
    c.reset(with_key(
        pb::ResetRequest {
            key: "alice".into(),
            limit: Some(pb::reset_request::Limit::Name("login".into())),
        },
        beta(),
    ))
    .await
    .expect("reset");
    assert!(
        c.check(with_key(check(), beta()))
            .await
            .expect("check")
            .into_inner()
            .allowed
    );
    let still = c
        .check(with_key(check(), alpha()))
        .await
        .expect("check")
        .into_inner();
    assert!(!still.allowed, "beta's Reset lifted alpha's limit");
}

/// On the memory store, each tenant's caps hold through the server: at its cap a tenant gets
/// RESOURCE_EXHAUSTED for sessions, cache bytes and counters, and the other tenant, at the
/// same moment, creates all three. (Redis has no per-tenant memory caps: its own limits and
/// eviction policy govern; see the README.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_caps_hold_per_tenant_through_the_server() {
    let b = Backend::memory(|c: &mut Config| {
        two_tenants(c);
        c.quota.memory_sessions = 2;
        c.quota.memory_cache_bytes = 4096;
        c.quota.memory_counters = 2;
    })
    .await;
    let mut s = SessionServiceClient::new(b.server.channel.clone());
    let mut cache = CacheServiceClient::new(b.server.channel.clone());
    let mut rl = RateLimitServiceClient::new(b.server.channel.clone());
    let session = |user: &str| pb::CreateSessionRequest {
        user_id: user.into(),
        ..Default::default()
    };
    let set = |key: &str| pb::CacheSetRequest {
        namespace: "ns".into(),
        key: key.into(),
        value: Bytes::from(vec![b'x'; 1500]),
        ..Default::default()
    };
    let check = |key: &str| pb::CheckRequest {
        checks: vec![pb::LimitCheck {
            limit: Some(pb::limit_check::Limit::Name("login".into())),
            key: key.into(),
        }],
        ..Default::default()
    };
    for user in ["u1", "u2"] {
        s.create_session(with_key(session(user), alpha()))
            .await
            .expect("within the session cap");
    }
    for key in ["k1", "k2"] {
        cache
            .set(with_key(set(key), alpha()))
            .await
            .expect("within the byte cap");
    }
    for key in ["k1", "k2"] {
        rl.check(with_key(check(key), alpha()))
            .await
            .expect("within the counter cap");
    }
    let full = |r: Result<(), tonic::Status>| r.expect_err("over the cap").code();
    assert_eq!(
        full(
            s.create_session(with_key(session("u3"), alpha()))
                .await
                .map(drop)
        ),
        Code::ResourceExhausted
    );
    assert_eq!(
        full(cache.set(with_key(set("k3"), alpha())).await.map(drop)),
        Code::ResourceExhausted
    );
    assert_eq!(
        full(rl.check(with_key(check("k3"), alpha())).await.map(drop)),
        Code::ResourceExhausted
    );
    s.create_session(with_key(session("u3"), beta()))
        .await
        .expect("beta's own cap");
    cache
        .set(with_key(set("k3"), beta()))
        .await
        .expect("beta's own cap");
    rl.check(with_key(check("k3"), beta()))
        .await
        .expect("beta's own cap");
}

fn lock_req(name: &str) -> pb::AcquireLockRequest {
    pb::AcquireLockRequest {
        name: name.into(),
        ttl: Some(prost_types::Duration {
            seconds: 30,
            nanos: 0,
        }),
        wait: None,
        limit: 1,
        metadata: Default::default(),
    }
}

/// The same lock name is two locks: beta is granted what alpha holds, cannot see alpha's
/// holder, and cannot release or extend alpha's holding even with alpha's token.
async fn locks_are_separate_across_tenants(b: Backend) {
    let mut c = LockServiceClient::new(b.server.channel.clone());
    let a = c
        .acquire(with_key(lock_req("campaign:42"), alpha()))
        .await
        .expect("alpha acquires")
        .into_inner();
    assert!(a.acquired);
    let inspect = || pb::InspectLockRequest {
        name: "campaign:42".into(),
    };
    let seen = c
        .inspect(with_key(inspect(), beta()))
        .await
        .expect("inspect")
        .into_inner();
    assert!(
        seen.holders.is_empty() && seen.last_fencing_token == 0,
        "{seen:?}"
    );
    for refused in [
        c.release(with_key(
            pb::ReleaseLockRequest {
                name: "campaign:42".into(),
                token: a.token.clone(),
            },
            beta(),
        ))
        .await
        .expect_err("beta releases alpha's lock"),
        c.extend(with_key(
            pb::ExtendLockRequest {
                name: "campaign:42".into(),
                token: a.token.clone(),
                ttl: Some(prost_types::Duration {
                    seconds: 60,
                    nanos: 0,
                }),
            },
            beta(),
        ))
        .await
        .expect_err("beta extends alpha's lock"),
    ] {
        assert_eq!(refused.code(), Code::FailedPrecondition);
    }
    let bl = c
        .acquire(with_key(lock_req("campaign:42"), beta()))
        .await
        .expect("beta acquires")
        .into_inner();
    assert!(bl.acquired, "beta's lock of the same name is free");
    // Alpha's holding is untouched.
    let still = c
        .inspect(with_key(inspect(), alpha()))
        .await
        .expect("inspect")
        .into_inner();
    assert_eq!(still.holders.len(), 1);
    assert_eq!(still.holders[0].holder_id, a.holder_id);
}

/// The same topic is two topics: beta's subscriber never sees alpha's events (nor alpha's
/// own `flowstate.*` events), and beta's position in its topic says nothing of alpha's.
async fn topics_are_separate_across_tenants(b: Backend) {
    let mut c = EventServiceClient::new(b.server.channel.clone());
    let subscribe = |key: &'static str| {
        with_key(
            pb::SubscribeRequest {
                topics: vec!["campaign:42".into(), "flowstate.sessions".into()],
                ..Default::default()
            },
            key,
        )
    };
    let mut beta_stream = c
        .subscribe(subscribe(beta()))
        .await
        .expect("subscribe")
        .into_inner();
    assert!(matches!(
        beta_stream
            .message()
            .await
            .expect("ok")
            .and_then(|m| m.kind),
        Some(Kind::Subscribed(_))
    ));
    let publish = |key: &'static str, payload: &'static [u8]| {
        with_key(
            pb::PublishRequest {
                topic: "campaign:42".into(),
                payload: Bytes::from_static(payload),
                key: String::new(),
            },
            key,
        )
    };
    c.publish(publish(alpha(), b"alpha's"))
        .await
        .expect("publish");
    let mut sessions = SessionServiceClient::new(b.server.channel.clone());
    let s = sessions
        .create_session(with_key(
            pb::CreateSessionRequest {
                user_id: "alice".into(),
                ..Default::default()
            },
            alpha(),
        ))
        .await
        .expect("create")
        .into_inner();
    sessions
        .delete_session(with_key(
            pb::DeleteSessionRequest {
                target: Some(pb::delete_session_request::Target::Id(s.id)),
            },
            alpha(),
        ))
        .await
        .expect("delete");
    let beta_id = c
        .publish(publish(beta(), b"beta's"))
        .await
        .expect("publish")
        .into_inner()
        .id;
    // Beta's next event is its own: alpha's event and alpha's revocation never reach it.
    match beta_stream
        .message()
        .await
        .expect("ok")
        .and_then(|m| m.kind)
    {
        Some(Kind::Event(e)) => {
            assert_eq!(e.id, beta_id);
            assert_eq!(&e.payload[..], b"beta's");
        }
        other => panic!("beta got {other:?}"),
    }
}

/// The same queue name is two queues: beta fetches nothing of alpha's jobs, sees none in its
/// stats, and cannot settle alpha's lease even with its token and job id.
async fn queues_are_separate_across_tenants(b: Backend) {
    let mut c = QueueServiceClient::new(b.server.channel.clone());
    let enqueue = |payload: &'static str| pb::EnqueueRequest {
        queue: "emails".into(),
        payload: Bytes::from_static(payload.as_bytes()),
        options: Some(pb::JobOptions {
            unique_key: "welcome".into(),
            ..Default::default()
        }),
    };
    let a = c
        .enqueue(with_key(enqueue("alpha's"), alpha()))
        .await
        .expect("alpha enqueues")
        .into_inner();
    let fetch = || pb::FetchRequest {
        queues: vec!["emails".into()],
        max: 10,
        wait: None,
    };
    let stats = || pb::QueueStatsRequest {
        queue: "emails".into(),
    };
    let none = c
        .fetch(with_key(fetch(), beta()))
        .await
        .expect("beta fetches")
        .into_inner();
    assert!(none.jobs.is_empty());
    assert_eq!(
        c.stats(with_key(stats(), beta()))
            .await
            .expect("stats")
            .into_inner()
            .ready,
        0
    );
    // The same unique key is beta's own.
    let bj = c
        .enqueue(with_key(enqueue("beta's"), beta()))
        .await
        .expect("beta enqueues")
        .into_inner();
    assert!(!bj.duplicate && bj.job_id != a.job_id);
    let job = c
        .fetch(with_key(fetch(), alpha()))
        .await
        .expect("alpha fetches")
        .into_inner()
        .jobs
        .remove(0);
    assert_eq!(job.payload.as_ref(), b"alpha's");
    let ack = || pb::AckRequest {
        queue: "emails".into(),
        job_id: job.id.clone(),
        lease_token: job.lease_token.clone(),
    };
    let refused = c
        .ack(with_key(ack(), beta()))
        .await
        .expect_err("beta acks alpha's job");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    c.ack(with_key(ack(), alpha())).await.expect("alpha acks");
    let left = c
        .fetch(with_key(fetch(), beta()))
        .await
        .expect("beta fetches")
        .into_inner()
        .jobs;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].payload.as_ref(), b"beta's");
}

async fn usage_is_separate_across_tenants(b: Backend) {
    let mut c = UsageServiceClient::new(b.server.channel.clone());
    let event = pb::UsageEvent {
        metric: "llm_tokens".into(),
        subject: "ws-1".into(),
        amount: Some(7),
        unique: "u".into(),
        ..Default::default()
    };
    c.record(with_key(
        pb::RecordRequest {
            events: vec![event],
            ..Default::default()
        },
        alpha(),
    ))
    .await
    .expect("alpha records");
    let now = flowstate::time::now_ms();
    let query = |unique: bool| pb::QueryRequest {
        metric: "llm_tokens".into(),
        subject: "ws-1".into(),
        from: Some(flowstate::time::to_timestamp(now - 86_400_000)),
        to: Some(flowstate::time::to_timestamp(now + 86_400_000)),
        granularity: pb::Granularity::Day as i32,
        unique,
        ..Default::default()
    };
    for (key, want) in [(alpha(), 7), (beta(), 0)] {
        let r = c
            .query(with_key(query(false), key))
            .await
            .expect("query")
            .into_inner();
        assert_eq!(r.series[0].total, want);
        let u = c
            .query(with_key(query(true), key))
            .await
            .expect("unique")
            .into_inner();
        assert_eq!(u.series[0].total, want.min(1));
    }
    let top = c
        .top(with_key(
            pb::TopRequest {
                metric: "llm_tokens".into(),
                window: Some(prost_types::Duration {
                    seconds: 3600,
                    nanos: 0,
                }),
                n: 10,
                granularity: 0,
            },
            beta(),
        ))
        .await
        .expect("top")
        .into_inner();
    assert!(top.entries.is_empty(), "beta sees no subject of alpha");
}

async fn envoy_rate_limits_are_separate_across_tenants(b: Backend) {
    use flowstate::proto::envoy::{
        extensions::common::ratelimit::v3::{RateLimitDescriptor, rate_limit_descriptor::Entry},
        service::ratelimit::v3::{
            RateLimitRequest, rate_limit_response::Code as RlsCode,
            rate_limit_service_client::RateLimitServiceClient as RlsClient,
        },
    };
    let mut c = RlsClient::new(b.server.channel.clone());
    let request = || RateLimitRequest {
        domain: "edge".into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry {
                key: "user".into(),
                value: "alice".into(),
            }],
            limit: None,
            hits_addend: None,
        }],
        hits_addend: 0,
    };
    let ask = |key: &'static str| {
        let mut c = c.clone();
        async move {
            c.should_rate_limit(with_key(request(), key))
                .await
                .expect("ShouldRateLimit")
                .into_inner()
                .overall_code
        }
    };
    for _ in 0..2 {
        assert_eq!(ask(alpha()).await, RlsCode::Ok as i32);
    }
    assert_eq!(
        ask(alpha()).await,
        RlsCode::OverLimit as i32,
        "alpha is over"
    );
    assert_eq!(
        ask(beta()).await,
        RlsCode::Ok as i32,
        "beta has its own budget"
    );
    let _ = &mut c;
}
