//! TLS and mTLS on the gRPC listener: callers with the right CA and key (or client certificate)
//! get answers, plaintext and unknown certificates are refused cleanly, client-certificate
//! identities map to a tenant and permissions, and a rotated certificate is served without a
//! restart.

use std::{path::Path, time::Duration};

use crate::common::{
    TestServer, eventually,
    pki::{Pair, Pki},
    test_config, with_key,
};
use flowstate::{
    auth::{keys, permission::Permissions},
    config::{AuthMode, ClientAuth, ClientIdentity, Config, PositiveDuration},
    proto::v1 as pb,
    tenant::Tenant,
};
use pb::cache_service_client::CacheServiceClient;
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const BACKEND_SAN: &str = "spiffe://flowstate.test/backend";

fn tls_config(server: &Pair, client_ca: Option<&Path>) -> Config {
    let mut c = test_config();
    c.server.tls.cert_file = Some(server.cert.clone());
    c.server.tls.key_file = Some(server.key.clone());
    c.server.tls.client_ca_file = client_ca.map(Path::to_path_buf);
    c.server.tls.client_auth = ClientAuth::Optional;
    c.auth.reload_interval = PositiveDuration::new(Duration::from_millis(100)).expect("positive");
    c
}

/// A TLS channel to `server` trusting `ca`, presenting `identity` if given.
fn channel(server: &TestServer, ca: &Pair, identity: Option<&Pair>) -> Channel {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.cert_pem()))
        .domain_name("localhost");
    if let Some(id) = identity {
        tls = tls.identity(Identity::from_pem(id.cert_pem(), id.key_pem()));
    }
    Endpoint::from_shared(format!("https://127.0.0.1:{}", server.addr.port()))
        .expect("endpoint")
        .tls_config(tls)
        .expect("tls config")
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(3))
        .connect_lazy()
}

async fn serving(channel: Channel) -> bool {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "readiness".into(),
        })
        .await
        .is_ok_and(|r| r.into_inner().status() == ServingStatus::Serving)
}

fn get() -> pb::CacheGetRequest {
    pb::CacheGetRequest {
        namespace: "ns".into(),
        key: "k".into(),
        lease: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_keys_and_plaintext_refused_cleanly() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let cert = pki.server(&ca, "server");
    let key = keys::generate(
        &Tenant::new("acme").expect("tenant"),
        Permissions::parse("cache:read").expect("permissions"),
    );
    let mut config = tls_config(&cert, None);
    config.auth.mode = AuthMode::Required;
    config.auth.keys = Some(key.line.clone());
    let health_port = crate::common::free_port();
    config.server.health_listen = Some(([127, 0, 0, 1], health_port).into());
    let server = TestServer::start(config).await;
    let tls = channel(&server, &ca, None);
    assert!(
        eventually(Duration::from_secs(10), || serving(tls.clone())).await,
        "TLS health never answered"
    );
    // The kubelet's gRPC probes speak plaintext: they use the health-only listener.
    let probe = Endpoint::from_shared(format!("http://127.0.0.1:{health_port}"))
        .expect("endpoint")
        .connect_lazy();
    assert!(serving(probe.clone()).await, "plaintext health listener");
    let not_health = CacheServiceClient::new(probe)
        .get(with_key(get(), &key.key))
        .await
        .expect_err("the health listener serves health only");
    assert_eq!(not_health.code(), Code::Unimplemented);
    CacheServiceClient::new(tls.clone())
        .get(with_key(get(), &key.key))
        .await
        .expect("a TLS call with a key");
    let no_key = CacheServiceClient::new(tls.clone())
        .get(tonic::Request::new(get()))
        .await
        .expect_err("TLS alone is not authentication");
    assert_eq!(no_key.code(), Code::Unauthenticated);

    // Plaintext to the TLS port: an error within the timeout, not a hang, and the server
    // keeps serving TLS callers.
    let started = std::time::Instant::now();
    let plain = Endpoint::from_shared(format!("http://127.0.0.1:{}", server.addr.port()))
        .expect("endpoint")
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    let err = CacheServiceClient::new(plain)
        .get(with_key(get(), &key.key))
        .await
        .expect_err("plaintext to a TLS port");
    assert_ne!(err.code(), Code::Ok);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "plaintext hung: {err:?}"
    );
    // A client trusting another CA refuses the server.
    let stranger = pki.ca("stranger");
    assert!(!serving(channel(&server, &stranger, None)).await);
    assert!(serving(tls).await, "still serving TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_identify_a_tenant() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let server_cert = pki.server(&ca, "server");
    let clients_ca = pki.ca("clients");
    let backend = pki.leaf(
        &clients_ca,
        "backend",
        &format!("URI:{BACKEND_SAN}"),
        "clientAuth",
    );
    let unlisted = pki.leaf(
        &clients_ca,
        "other",
        "URI:spiffe://flowstate.test/other",
        "clientAuth",
    );
    let both = pki.leaf(
        &clients_ca,
        "both",
        &format!("URI:{BACKEND_SAN},URI:spiffe://flowstate.test/analytics"),
        "clientAuth",
    );
    let rogue_ca = pki.ca("rogue");
    let rogue = pki.leaf(
        &rogue_ca,
        "rogue",
        &format!("URI:{BACKEND_SAN}"),
        "clientAuth",
    );

    let mut config = tls_config(&server_cert, Some(&clients_ca.cert));
    config.auth.mode = AuthMode::Required;
    config.auth.clients = vec![
        ClientIdentity {
            san: BACKEND_SAN.into(),
            tenant: "acme".into(),
            allow: "cache:*".into(),
        },
        ClientIdentity {
            san: "spiffe://flowstate.test/analytics".into(),
            tenant: "globex".into(),
            allow: "cache:read".into(),
        },
    ];
    let server = TestServer::start(config).await;
    let listed = channel(&server, &ca, Some(&backend));
    assert!(eventually(Duration::from_secs(10), || serving(listed.clone())).await);
    let mut c = CacheServiceClient::new(listed);
    c.set(tonic::Request::new(pb::CacheSetRequest {
        namespace: "ns".into(),
        key: "k".into(),
        value: bytes::Bytes::from_static(b"v"),
        ..Default::default()
    }))
    .await
    .expect("the certificate is the credential");
    assert!(
        c.get(tonic::Request::new(get()))
            .await
            .expect("get")
            .into_inner()
            .found
    );

    // A verified certificate whose name is not listed, and no key: UNAUTHENTICATED.
    let err = CacheServiceClient::new(channel(&server, &ca, Some(&unlisted)))
        .get(tonic::Request::new(get()))
        .await
        .expect_err("not listed");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    // A certificate naming two listed identities acts as neither (never by SAN order).
    let err = CacheServiceClient::new(channel(&server, &ca, Some(&both)))
        .get(tonic::Request::new(get()))
        .await
        .expect_err("ambiguous");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    // A certificate from another CA, even with a listed name, fails the handshake.
    assert!(!serving(channel(&server, &ca, Some(&rogue))).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_can_be_required() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let server_cert = pki.server(&ca, "server");
    let clients_ca = pki.ca("clients");
    let backend = pki.leaf(
        &clients_ca,
        "backend",
        &format!("URI:{BACKEND_SAN}"),
        "clientAuth",
    );
    let mut config = tls_config(&server_cert, Some(&clients_ca.cert));
    config.server.tls.client_auth = ClientAuth::Required;
    let server = TestServer::start(config).await;
    let with_cert = channel(&server, &ca, Some(&backend));
    assert!(eventually(Duration::from_secs(10), || serving(with_cert.clone())).await);
    assert!(
        !serving(channel(&server, &ca, None)).await,
        "a connection without a certificate is refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_without_a_restart() {
    let pki = Pki::new();
    let old_ca = pki.ca("old-ca");
    let new_ca = pki.ca("new-ca");
    let live = Pair {
        cert: pki.path("live.crt"),
        key: pki.path("live.key"),
    };
    let first = pki.server(&old_ca, "first");
    std::fs::copy(&first.cert, &live.cert).expect("copy");
    std::fs::copy(&first.key, &live.key).expect("copy");
    let server = TestServer::start(tls_config(&live, None)).await;
    assert!(
        eventually(Duration::from_secs(10), || serving(channel(
            &server, &old_ca, None
        )))
        .await
    );
    assert!(!serving(channel(&server, &new_ca, None)).await);

    // cert-manager writes the renewed pair; new connections get it, with no restart.
    let second = pki.server(&new_ca, "second");
    std::fs::copy(&second.key, &live.key).expect("copy");
    std::fs::copy(&second.cert, &live.cert).expect("copy");
    assert!(
        eventually(Duration::from_secs(10), || serving(channel(
            &server, &new_ca, None
        )))
        .await,
        "the rotated certificate is never served"
    );
    assert!(
        !serving(channel(&server, &old_ca, None)).await,
        "the old one is gone"
    );

    // A broken rotation (garbage, then a certificate with another pair's key) keeps the
    // certificate in force, and the next good one is picked up.
    let third = pki.server(&old_ca, "third");
    std::fs::write(&live.cert, "not a certificate").expect("write");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        serving(channel(&server, &new_ca, None)).await,
        "kept after garbage"
    );
    std::fs::copy(&third.cert, &live.cert).expect("copy");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        serving(channel(&server, &new_ca, None)).await,
        "kept after a certificate that does not match its key"
    );
    std::fs::copy(&third.key, &live.key).expect("copy");
    assert!(
        eventually(Duration::from_secs(10), || serving(channel(
            &server, &old_ca, None
        )))
        .await,
        "the next good pair is never served"
    );
}
