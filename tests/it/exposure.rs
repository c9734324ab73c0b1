//! Nothing readable that should not be: a real flowstate process with auth on, logging every
//! crate at trace level as JSON into a file, serves a workload full of recognisable secrets
//! (API keys, session ids, session data, cache keys, values and tags, limit keys, user ids),
//! successful calls and failing ones alike. Then its log file, every error message the calls
//! got back (with their details) and its metrics page are searched for each secret.
//!
//! Besides the hand-written workload, every method of every registered service (from
//! `services::ALL` and the descriptors, so a new service is covered without edits here) is
//! called with every string and bytes field set to a secret of that method, except the fields
//! that carry a name the operator configured (see `common::every_method`).

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use crate::common::{
    RedisServer, eventually, every_method::call_every_method, free_port, unique_prefix, with_key,
};
use bytes::Bytes;
use flowstate::{
    auth::{keys, permission::Permissions},
    proto::v1 as pb,
    tenant::Tenant,
};
use pb::{
    cache_service_client::CacheServiceClient, rate_limit_service_client::RateLimitServiceClient,
    session_service_client::SessionServiceClient,
};
use tonic::transport::Endpoint;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// The secrets the workload uses; none may appear anywhere it can be read.
const DATA: &str = "dataSECRET0f1e";
const CACHE_KEY: &str = "cachekeySECRET9a8b";
const CACHE_VALUE: &str = "valueSECRET7c6d";
const TAG: &str = "tagSECRET5e4f";
const LIMIT_KEY: &str = "limitkeySECRET3a2b";
const USER: &str = "userSECRET1c0d";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_logs_errors_or_metrics() {
    let redis = RedisServer::start().await;
    let key = keys::generate(
        &Tenant::new("acme").expect("tenant"),
        Permissions::parse("sessions:*,cache:*,ratelimit:check").expect("permissions"),
    );
    let every = keys::generate(
        &Tenant::new("acme").expect("tenant"),
        Permissions::parse("*").expect("permissions"),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let log_path = dir.path().join("flowstate.log");
    let (port, metrics_port) = (free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_flowstate"))
        .env_clear()
        .env("FLOWSTATE_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "FLOWSTATE_METRICS__LISTEN",
            format!("127.0.0.1:{metrics_port}"),
        )
        .env("FLOWSTATE_REDIS__URL", redis.url())
        .env("FLOWSTATE_REDIS__KEY_PREFIX", unique_prefix())
        .env("FLOWSTATE_AUTH__MODE", "required")
        .env(
            "FLOWSTATE_AUTH__KEYS",
            format!("{}\n{}", key.line, every.line),
        )
        .env("FLOWSTATE_LOG__FORMAT", "json")
        // Every crate at trace, the most an operator can turn on: tonic, h2, hyper and redis included.
        .env("FLOWSTATE_LOG__LEVEL", "trace")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).expect("log file"))
        .spawn()
        .expect("spawn flowstate");
    let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("endpoint")
        .connect_lazy();
    let ready = eventually(Duration::from_secs(20), || {
        let mut h = HealthClient::new(channel.clone());
        async move {
            h.check(HealthCheckRequest {
                service: "readiness".into(),
            })
            .await
            .is_ok_and(|r| r.into_inner().status() == ServingStatus::Serving)
        }
    })
    .await;
    assert!(ready, "flowstate did not become ready");

    let mut errors: Vec<String> = Vec::new();
    let mut note = |r: Result<(), tonic::Status>| {
        if let Err(status) = r {
            errors.push(format!("{status:?} {:?}", status.details()));
        }
    };
    let k = key.key.as_str();
    let mut s = SessionServiceClient::new(channel.clone());
    let mut ids = Vec::new();
    for _ in 0..3 {
        let created = s
            .create_session(with_key(
                pb::CreateSessionRequest {
                    user_id: USER.into(),
                    data: [(DATA.to_owned(), Bytes::from_static(DATA.as_bytes()))].into(),
                    metadata: [("ua".to_owned(), DATA.to_owned())].into(),
                    ..Default::default()
                },
                k,
            ))
            .await
            .expect("create")
            .into_inner();
        ids.push(created.id);
    }
    let id = ids[0].clone();
    note(
        s.get_session(with_key(
            pb::GetSessionRequest {
                id: id.clone(),
                touch: true,
            },
            k,
        ))
        .await
        .map(drop),
    );
    note(
        s.update_session(with_key(
            pb::UpdateSessionRequest {
                id: id.clone(),
                set: [(DATA.to_owned(), Bytes::from_static(DATA.as_bytes()))].into(),
                expected_version: 99,
                ..Default::default()
            },
            k,
        ))
        .await
        .map(drop),
    );
    note(
        s.update_session(with_key(
            pb::UpdateSessionRequest {
                id: id.clone(),
                set: [(DATA.repeat(20), Bytes::from(DATA.repeat(10_000)))].into(),
                ..Default::default()
            },
            k,
        ))
        .await
        .map(drop),
    );
    note(
        s.rotate_session(with_key(pb::RotateSessionRequest { id: ids[1].clone() }, k))
            .await
            .map(drop),
    );
    note(
        s.get_session(with_key(
            pb::GetSessionRequest {
                id: ids[1].clone(),
                touch: false,
            },
            k,
        ))
        .await
        .map(drop),
    );
    let mangled = format!("{}{}", &id[..40], &DATA[..14]);
    note(
        s.get_session(with_key(
            pb::GetSessionRequest {
                id: mangled,
                touch: false,
            },
            k,
        ))
        .await
        .map(drop),
    );
    note(
        s.get_session(with_key(
            pb::GetSessionRequest {
                id: format!("{DATA}{id}"),
                touch: false,
            },
            k,
        ))
        .await
        .map(drop),
    );
    note(
        s.list_user_sessions(with_key(
            pb::ListUserSessionsRequest {
                user_id: USER.into(),
            },
            k,
        ))
        .await
        .map(drop),
    );
    note(
        s.list_user_sessions(with_key(
            pb::ListUserSessionsRequest {
                user_id: USER.repeat(100),
            },
            k,
        ))
        .await
        .map(drop),
    );
    note(
        s.delete_session(with_key(
            pb::DeleteSessionRequest {
                target: Some(pb::delete_session_request::Target::Id(ids[2].clone())),
            },
            k,
        ))
        .await
        .map(drop),
    );
    note(
        s.touch_session(with_key(pb::TouchSessionRequest { id: id.clone() }, k))
            .await
            .map(drop),
    );
    note(
        s.delete_user_sessions(with_key(
            pb::DeleteUserSessionsRequest {
                user_id: USER.into(),
                keep_handle: Some(DATA.into()),
            },
            k,
        ))
        .await
        .map(drop),
    );
    // Unauthenticated and forged keys.
    note(
        s.get_session(tonic::Request::new(pb::GetSessionRequest {
            id: id.clone(),
            touch: false,
        }))
        .await
        .map(drop),
    );
    let forged = format!("{}{}", &k[..k.len() - 8], "AAAAAAAA");
    note(
        s.get_session(with_key(
            pb::GetSessionRequest {
                id: id.clone(),
                touch: false,
            },
            &forged,
        ))
        .await
        .map(drop),
    );

    let mut c = CacheServiceClient::new(channel.clone());
    let set = |key: String, value: String, tags: Vec<String>| pb::CacheSetRequest {
        namespace: "ns".into(),
        key,
        value: Bytes::from(value),
        tags,
        ..Default::default()
    };
    note(
        c.set(with_key(
            set(CACHE_KEY.into(), CACHE_VALUE.into(), vec![TAG.into()]),
            k,
        ))
        .await
        .map(drop),
    );
    note(
        c.get(with_key(
            pb::CacheGetRequest {
                namespace: "ns".into(),
                key: CACHE_KEY.into(),
                lease: true,
            },
            k,
        ))
        .await
        .map(drop),
    );
    note(
        c.set(with_key(
            set(CACHE_KEY.repeat(100), CACHE_VALUE.into(), vec![]),
            k,
        ))
        .await
        .map(drop),
    );
    note(
        c.set(with_key(
            set(CACHE_KEY.into(), CACHE_VALUE.into(), vec![TAG.repeat(100)]),
            k,
        ))
        .await
        .map(drop),
    );
    note(
        c.set(with_key(
            pb::CacheSetRequest {
                lease_token: CACHE_VALUE.into(),
                ..set(CACHE_KEY.into(), CACHE_VALUE.into(), vec![TAG.into()])
            },
            k,
        ))
        .await
        .map(drop),
    );
    note(
        c.get_many(with_key(
            pb::CacheGetManyRequest {
                namespace: "ns".into(),
                keys: vec![CACHE_KEY.into(), String::new()],
            },
            k,
        ))
        .await
        .map(drop),
    );
    note(
        c.set_many(with_key(
            pb::CacheSetManyRequest {
                namespace: "ns".into(),
                entries: vec![
                    pb::CacheSetManyEntry {
                        key: CACHE_KEY.into(),
                        value: Bytes::from_static(CACHE_VALUE.as_bytes()),
                        tags: vec![TAG.into()],
                        ..Default::default()
                    },
                    pb::CacheSetManyEntry {
                        key: String::new(),
                        value: Bytes::from_static(CACHE_VALUE.as_bytes()),
                        ..Default::default()
                    },
                ],
            },
            k,
        ))
        .await
        .map(drop),
    );
    note(
        c.invalidate_tags(with_key(
            pb::CacheInvalidateTagsRequest {
                namespace: "ns".into(),
                tags: vec![TAG.into()],
            },
            k,
        ))
        .await
        .map(drop),
    );
    note(
        c.invalidate_namespace(with_key(
            pb::CacheInvalidateNamespaceRequest {
                namespace: "ns2".into(),
            },
            k,
        ))
        .await
        .map(drop),
    );
    note(
        c.delete(with_key(
            pb::CacheDeleteRequest {
                namespace: "ns".into(),
                keys: vec![CACHE_KEY.into()],
            },
            k,
        ))
        .await
        .map(drop),
    );
    note(
        c.get(with_key(
            pb::CacheGetRequest {
                namespace: format!("{CACHE_KEY}:x"),
                key: CACHE_KEY.into(),
                lease: false,
            },
            k,
        ))
        .await
        .map(drop),
    );

    let mut r = RateLimitServiceClient::new(channel.clone());
    let check = |key: String| pb::CheckRequest {
        checks: vec![pb::LimitCheck {
            key,
            limit: Some(pb::limit_check::Limit::Policy(pb::LimitPolicy {
                algorithm: pb::Algorithm::Gcra.into(),
                limit: 1,
                period: Some(prost_types::Duration {
                    seconds: 60,
                    nanos: 0,
                }),
                ..Default::default()
            })),
        }],
        ..Default::default()
    };
    for _ in 0..2 {
        note(
            r.check(with_key(check(LIMIT_KEY.into()), k))
                .await
                .map(drop),
        );
    }
    note(
        r.check(with_key(check(LIMIT_KEY.repeat(100)), k))
            .await
            .map(drop),
    );
    note(
        r.check(with_key(
            pb::CheckRequest {
                checks: vec![pb::LimitCheck {
                    key: LIMIT_KEY.into(),
                    limit: Some(pb::limit_check::Limit::Name(LIMIT_KEY.into())),
                }],
                ..Default::default()
            },
            k,
        ))
        .await
        .map(drop),
    );
    note(
        r.reset(with_key(
            pb::ResetRequest {
                key: LIMIT_KEY.into(),
                limit: Some(pb::reset_request::Limit::Name("x".into())),
            },
            k,
        ))
        .await
        .map(drop),
    );

    let mut method_secrets = Vec::new();
    for call in call_every_method(&channel, Some(&every.key), "probe", |m| {
        format!("zq{m}SECRETzq")
    })
    .await
    {
        if let Err(status) = call.reply {
            errors.push(format!("{}: {status:?} {:?}", call.path, status.details()));
        }
        method_secrets.push(call.secret);
    }

    let metrics = reqwest_metrics(metrics_port).await;
    // A clean stop flushes the log.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log_path).expect("log");
    assert!(
        log.lines().count() > 50,
        "debug logging was on: {} lines",
        log.lines().count()
    );
    assert!(
        errors.len() >= 12,
        "the workload failed as meant to: {errors:#?}"
    );

    let secret_part = &key.key[16..];
    let mut secrets: Vec<&str> = vec![
        secret_part,
        &every.key[16..],
        DATA,
        CACHE_KEY,
        CACHE_VALUE,
        TAG,
        LIMIT_KEY,
        USER,
    ];
    let id_secrets: Vec<String> = ids.iter().map(|id| id[11..].to_owned()).collect();
    secrets.extend(id_secrets.iter().map(String::as_str));
    secrets.extend(method_secrets.iter().map(String::as_str));
    let mut found = Vec::new();
    for secret in &secrets {
        for (place, text) in [
            ("log", log.as_str()),
            ("errors", &errors.join("\n")),
            ("metrics", metrics.as_str()),
        ] {
            if text.contains(secret) {
                let line = text
                    .lines()
                    .find(|l| l.contains(secret))
                    .unwrap_or_default();
                found.push(format!(
                    "{place}: {secret}: {}",
                    &line[..line.len().min(300)]
                ));
            }
        }
    }
    assert!(found.is_empty(), "secrets exposed:\n{}", found.join("\n"));
    eprintln!(
        "{} log lines, {} error replies and {} bytes of metrics searched for {} secrets",
        log.lines().count(),
        errors.len(),
        metrics.len(),
        secrets.len()
    );
}

/// The metrics page, with a plain HTTP/1.1 GET.
async fn reqwest_metrics(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("metrics port");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut body = String::new();
    s.read_to_string(&mut body).await.expect("response");
    assert!(body.contains("flowstate_rpc_requests_total"), "{body:.200}");
    body
}
