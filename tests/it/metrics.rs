//! The Prometheus endpoint: every documented family is there and moves after real calls.
//! The server is a process of its own: the metrics recorder is process-global.

use std::time::Duration;

use crate::common::{RedisServer, eventually, free_port, process::Process, unique_prefix};
use flowstate::proto::v1 as pb;
use pb::{
    cache_service_client::CacheServiceClient, limit_check::Limit,
    rate_limit_service_client::RateLimitServiceClient,
    semantic_cache_service_client::SemanticCacheServiceClient,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn scrape(port: u16) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the metrics listener");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut body = String::new();
    s.read_to_string(&mut body).await.expect("response");
    body
}

/// The value of the first sample whose line starts with `prefix` (name and labels).
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_cover_rpcs_store_cache_limits_and_sessions() {
    let port = free_port();
    let redis = RedisServer::start().await;
    let (url, prefix, listen) = (redis.url(), unique_prefix(), format!("127.0.0.1:{port}"));
    let server = Process::start(
        &[
            ("FLOWSTATE_REDIS__URL", &url),
            ("FLOWSTATE_REDIS__KEY_PREFIX", &prefix),
            ("FLOWSTATE_METRICS__ENABLED", "true"),
            ("FLOWSTATE_METRICS__LISTEN", &listen),
            (
                "FLOWSTATE_RATELIMIT__LIMITS__API__ALGORITHM",
                "fixed_window",
            ),
            ("FLOWSTATE_RATELIMIT__LIMITS__API__LIMIT", "1"),
            ("FLOWSTATE_RATELIMIT__LIMITS__API__PERIOD", "1h"),
            ("FLOWSTATE_SEMANTIC__NAMESPACES__ANSWERS__DIMENSION", "3"),
        ],
        0,
    )
    .await;

    let mut sessions =
        pb::session_service_client::SessionServiceClient::new(server.channel.clone());
    let s = sessions
        .create_session(pb::CreateSessionRequest {
            user_id: "u".into(),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner();
    let missing = sessions
        .get_session(pb::GetSessionRequest {
            id: "x".repeat(54),
            touch: false,
        })
        .await;
    assert!(missing.is_err());
    sessions
        .rotate_session(pb::RotateSessionRequest { id: s.id })
        .await
        .expect("rotate");

    let mut cache = CacheServiceClient::new(server.channel.clone());
    cache
        .set(pb::CacheSetRequest {
            namespace: "profiles".into(),
            key: "k".into(),
            value: bytes::Bytes::from_static(b"v"),
            ..Default::default()
        })
        .await
        .expect("set");
    for key in ["k", "k", "absent"] {
        cache
            .get(pb::CacheGetRequest {
                namespace: "profiles".into(),
                key: key.into(),
                lease: false,
            })
            .await
            .expect("get");
    }

    let mut semantic = SemanticCacheServiceClient::new(server.channel.clone());
    semantic
        .set(pb::SemanticSetRequest {
            namespace: "answers".into(),
            embedding: vec![1.0, 0.0, 0.0],
            value: bytes::Bytes::from_static(b"v"),
            ..Default::default()
        })
        .await
        .expect("semantic set");
    // A hit (once the namespace is loaded: its first Gets may miss) and a miss.
    let hit = eventually(Duration::from_secs(5), || {
        let mut semantic = semantic.clone();
        async move {
            semantic
                .get(pb::SemanticGetRequest {
                    namespace: "answers".into(),
                    embedding: vec![1.0, 0.01, 0.0],
                    min_similarity: None,
                })
                .await
                .is_ok_and(|r| r.into_inner().found)
        }
    })
    .await;
    assert!(hit, "the semantic entry was never found");
    semantic
        .get(pb::SemanticGetRequest {
            namespace: "answers".into(),
            embedding: vec![0.0, 0.0, 1.0],
            min_similarity: None,
        })
        .await
        .expect("semantic get");

    let mut limits = RateLimitServiceClient::new(server.channel.clone());
    for _ in 0..3 {
        limits
            .check(pb::CheckRequest {
                checks: vec![pb::LimitCheck {
                    limit: Some(Limit::Name("api".into())),
                    key: "user-1".into(),
                }],
                cost: None,
                dry_run: false,
            })
            .await
            .expect("check");
    }

    // The collector publishes cache counts and pool gauges once a second: poll for them.
    let mut text = String::new();
    let complete = eventually(Duration::from_secs(5), || async {
        let t = scrape(port).await;
        sample(
            &t,
            r#"flowstate_cache_requests_total{namespace="profiles",result="hit"}"#,
        ) == Some(2.0)
    })
    .await;
    assert!(complete, "cache counts never appeared");
    text.push_str(&scrape(port).await);

    let expect = |prefix: &str, value: f64| {
        assert_eq!(sample(&text, prefix), Some(value), "{prefix}\n{text}");
    };
    expect(
        r#"flowstate_rpc_requests_total{service="flowstate.v1.SessionService",method="CreateSession",code="OK"}"#,
        1.0,
    );
    expect(
        r#"flowstate_rpc_requests_total{service="flowstate.v1.SessionService",method="GetSession",code="INVALID_ARGUMENT"}"#,
        1.0,
    );
    expect(r#"flowstate_sessions_total{event="created"}"#, 1.0);
    expect(r#"flowstate_sessions_total{event="rotated"}"#, 1.0);
    expect(
        r#"flowstate_cache_requests_total{namespace="profiles",result="miss"}"#,
        1.0,
    );
    expect(r#"flowstate_cache_sets_total{namespace="profiles"}"#, 1.0);
    expect(
        r#"flowstate_ratelimit_decisions_total{limit="api",decision="allowed"}"#,
        1.0,
    );
    expect(
        r#"flowstate_ratelimit_decisions_total{limit="api",decision="denied"}"#,
        2.0,
    );
    expect(r#"flowstate_store_up"#, 1.0);
    expect(r#"flowstate_semantic_sets_total{namespace="answers"}"#, 1.0);
    assert!(
        sample(
            &text,
            r#"flowstate_semantic_requests_total{namespace="answers",result="hit"}"#
        )
        .is_some_and(|v| v >= 1.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            r#"flowstate_semantic_requests_total{namespace="answers",result="miss"}"#
        )
        .is_some_and(|v| v >= 1.0),
        "{text}"
    );
    expect("flowstate_semantic_index_entries", 1.0);
    expect("flowstate_semantic_tracking", 1.0);
    assert!(
        sample(&text, "flowstate_semantic_resyncs_total").is_some_and(|v| v >= 1.0),
        "{text}"
    );
    expect(r#"flowstate_build_info{version="#, 1.0);
    for family in [
        "flowstate_rpc_duration_seconds_bucket",
        "flowstate_store_duration_seconds_bucket{op=\"session_create\"",
        "flowstate_store_pool_connections{state=\"open\"}",
        "flowstate_store_pool_waiting",
    ] {
        assert!(sample(&text, family).is_some(), "{family} missing\n{text}");
    }
    assert!(
        sample(&text, r#"flowstate_store_pool_connections{state="open"}"#).unwrap_or(0.0) >= 1.0,
        "the pool has a connection open"
    );
    assert!(!text.contains("user-1"), "keys never become labels");
}
