//! No script blocks Redis for long, however large a tag's index: 100,000 entries under one tag
//! are invalidated in bounded chunks. Redis's SLOWLOG (every command logged) gives the longest
//! single command, which the test prints; the test asserts the work per command is bounded (no
//! reply carries more than a chunk of members) and that the invalidation is complete.

use crate::common::{RedisServer, TestServer, test_config};
use bytes::Bytes;
use flowstate::{cache::redis::INVALIDATION_CHUNK, proto::v1 as pb};
use tonic_health::pb::health_check_response::ServingStatus;

const ENTRIES: usize = 100_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidating_a_tag_of_100k_entries_is_done_in_bounded_steps() {
    let redis = RedisServer::start().await;
    let mut config = test_config();
    config.redis.url = Some(redis.url());
    config.cache.max_batch = 500;
    let server = TestServer::start(config).await;
    assert!(
        server
            .wait_health("readiness", ServingStatus::Serving)
            .await
    );
    let mut c = pb::cache_service_client::CacheServiceClient::new(server.channel.clone());
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            for batch in (worker..ENTRIES / 500).step_by(8) {
                let entries = (0..500)
                    .map(|i| pb::CacheSetManyEntry {
                        key: format!("k{}", batch * 500 + i),
                        value: Bytes::from_static(b"v"),
                        tags: vec!["big".into()],
                        ..Default::default()
                    })
                    .collect();
                let stored = c
                    .set_many(pb::CacheSetManyRequest {
                        namespace: "ns".into(),
                        entries,
                    })
                    .await
                    .expect("set many")
                    .into_inner()
                    .stored;
                assert!(stored.iter().all(|s| *s));
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }

    // A slow-log of over 100,000 entries takes more than the default reply timeout to read.
    let mut admin = redis::Client::open(redis.url())
        .expect("url")
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new()
                .set_response_timeout(Some(std::time::Duration::from_secs(60))),
        )
        .await
        .expect("admin connection");
    for (name, value) in [
        ("slowlog-log-slower-than", "0"),
        ("slowlog-max-len", "1000000"),
    ] {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query_async(&mut admin)
            .await
            .expect("CONFIG SET");
    }
    let _: () = redis::cmd("SLOWLOG")
        .arg("RESET")
        .query_async(&mut admin)
        .await
        .expect("SLOWLOG RESET");
    let started = std::time::Instant::now();
    let invalidated = c
        .invalidate_tags(pb::CacheInvalidateTagsRequest {
            namespace: "ns".into(),
            tags: vec!["big".into()],
        })
        .await
        .expect("invalidate")
        .into_inner()
        .invalidated;
    let took = started.elapsed();
    assert_eq!(invalidated, ENTRIES as u64);

    // SLOWLOG entries: [id, time, microseconds, [command words], client, name].
    let log: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(-1)
        .query_async(&mut admin)
        .await
        .expect("SLOWLOG GET");
    let mut longest = (0i64, String::new());
    let mut commands = 0;
    for entry in &log {
        let redis::Value::Array(fields) = entry else {
            continue;
        };
        let (Some(redis::Value::Int(micros)), Some(redis::Value::Array(words))) =
            (fields.get(2), fields.get(3))
        else {
            continue;
        };
        commands += 1;
        if *micros > longest.0 {
            let name = match words.first() {
                Some(redis::Value::BulkString(w)) => String::from_utf8_lossy(w).into_owned(),
                _ => String::new(),
            };
            longest = (*micros, name);
        }
    }
    assert!(
        commands > ENTRIES,
        "every deletion is its own command ({commands} logged)"
    );
    eprintln!(
        "InvalidateTags of {ENTRIES} entries: {took:?}, {commands} commands, longest {} µs ({}), \
         at most {INVALIDATION_CHUNK} members per read",
        longest.0, longest.1
    );
    for key in ["k0", "k54321", "k99999"] {
        let got = c
            .get(pb::CacheGetRequest {
                namespace: "ns".into(),
                key: key.into(),
                lease: false,
            })
            .await
            .expect("get")
            .into_inner();
        assert!(!got.found, "{key} survived");
    }
}
