//! Connecting to Redis the ways production does: a password (in the URL or apart from it) and
//! TLS (`rediss://`). A wrong password or an untrusted certificate is NOT_SERVING, never a hang.

use std::{process::Command, time::Duration};

use crate::common::{RedisServer, TestServer, free_port, test_config};
use flowstate::proto::v1 as pb;
use tonic::{Code, Request};
use tonic_health::pb::health_check_response::ServingStatus;

async fn sessions_work(server: &TestServer) {
    assert!(
        server
            .wait_health("readiness", ServingStatus::Serving)
            .await,
        "readiness never turned SERVING"
    );
    let mut c = server.sessions();
    let s = c
        .create_session(pb::CreateSessionRequest {
            user_id: "u".into(),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner();
    c.get_session(pb::GetSessionRequest {
        id: s.id,
        touch: false,
    })
    .await
    .expect("get");
}

/// Readiness stays NOT_SERVING and calls fail with UNAVAILABLE (not INTERNAL, not a hang).
async fn refused(server: &TestServer) {
    // Give the health task time to try (it starts NOT_SERVING and must stay there).
    let mut c = server.sessions();
    for _ in 0..3 {
        let mut r = Request::new(pb::ListUserSessionsRequest {
            user_id: "u".into(),
        });
        r.set_timeout(Duration::from_secs(3));
        let err = c.list_user_sessions(r).await.expect_err("store unusable");
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    }
    assert_eq!(
        server.health_status("readiness").await,
        ServingStatus::NotServing
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_from_the_url_or_from_redis_password() {
    let redis = RedisServer::start_with(&["--requirepass", "s3cret"]).await;

    let mut in_url = test_config();
    in_url.redis.url = Some(format!("redis://:s3cret@127.0.0.1:{}", redis.port));
    sessions_work(&TestServer::start(in_url).await).await;

    let mut apart = test_config();
    apart.redis.url = Some(redis.url());
    apart.redis.password = Some("s3cret".into());
    sessions_work(&TestServer::start(apart).await).await;

    let mut wrong = test_config();
    wrong.redis.url = Some(format!("redis://:nope@127.0.0.1:{}", redis.port));
    refused(&TestServer::start(wrong).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_rediss_urls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (apt-get install openssl)");
    assert!(made.status.success(), "{made:?}");
    let tls_port = free_port().to_string();
    let (cert_s, key_s) = (cert.to_string_lossy(), key.to_string_lossy());
    // Kept alive until the end of the test (killed on drop).
    let _redis = RedisServer::start_with(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &cert_s,
        "--tls-key-file",
        &key_s,
        "--tls-ca-cert-file",
        &cert_s,
        "--tls-auth-clients",
        "no",
    ])
    .await;

    // The test certificate is self-signed: verification must refuse it...
    let mut verified = test_config();
    verified.redis.url = Some(format!("rediss://127.0.0.1:{tls_port}"));
    refused(&TestServer::start(verified).await).await;

    // ...and with verification explicitly off (`#insecure`), the TLS connection carries calls.
    let mut insecure = test_config();
    insecure.redis.url = Some(format!("rediss://127.0.0.1:{tls_port}/#insecure"));
    sessions_work(&TestServer::start(insecure).await).await;
}
