//! The EventService contract, on every store through real gRPC calls: order, resume without
//! loss or duplicates, gaps reported (never skipped), slow subscribers cut off with the position
//! to resume from, fan-out, flowstate's own events.

use std::{collections::HashMap, num::NonZeroUsize, time::Duration};

use crate::common::Backend;
use flowstate::{config::TopicRetention, proto::v1 as pb};
use pb::{event_service_client::EventServiceClient, subscribe_response::Kind};
use tonic::{Code, Streaming, transport::Channel};
use tonic_types::StatusExt as _;

type Client = EventServiceClient<Channel>;

contract_tests! {
    subscribers_get_every_event_in_order,
    a_subscriber_resumes_after_its_last_id_without_loss_or_duplicates,
    earliest_gets_everything_kept,
    an_expired_position_is_reported_not_skipped with super::short_topics,
    a_slow_subscriber_is_cut_off_with_where_to_resume with super::small_buffer,
    topics_keep_their_own_order,
    many_subscribers_share_one_feed,
    flowstate_announces_revoked_sessions_and_invalidations,
    bad_input_is_rejected,
    a_subscription_ends_at_its_deadline,
}

fn short_topics(c: &mut flowstate::config::Config) {
    c.events.topics.push(TopicRetention {
        pattern: "short:*".into(),
        max_len: Some(5),
        max_age: None,
    });
}

fn small_buffer(c: &mut flowstate::config::Config) {
    c.events.subscriber_buffer = NonZeroUsize::new(64).expect("non-zero");
}

async fn publish(c: &mut Client, topic: &str, payload: &str) -> String {
    c.publish(pb::PublishRequest {
        topic: topic.into(),
        payload: bytes::Bytes::from(payload.to_owned()),
        key: format!("k-{}", &payload[..payload.len().min(16)]),
    })
    .await
    .expect("publish")
    .into_inner()
    .id
}

async fn subscribe(
    c: &mut Client,
    req: pb::SubscribeRequest,
) -> (Streaming<pb::SubscribeResponse>, HashMap<String, String>) {
    let mut stream = c.subscribe(req).await.expect("subscribe").into_inner();
    match next(&mut stream).await {
        Some(Kind::Subscribed(s)) => (stream, s.positions),
        other => panic!("the first message is Subscribed, not {other:?}"),
    }
}

fn topics(ts: &[&str]) -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        topics: ts.iter().map(|t| (*t).to_owned()).collect(),
        ..Default::default()
    }
}

async fn next(s: &mut Streaming<pb::SubscribeResponse>) -> Option<Kind> {
    tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .expect("a message within 10 s")
        .expect("stream ok")
        .and_then(|m| m.kind)
}

async fn event(s: &mut Streaming<pb::SubscribeResponse>) -> pb::Event {
    match next(s).await {
        Some(Kind::Event(e)) => e,
        other => panic!("expected an event, got {other:?}"),
    }
}

async fn subscribers_get_every_event_in_order(b: Backend) {
    let mut c = Client::new(b.server.channel.clone());
    let (mut s, positions) = subscribe(&mut c, topics(&["campaign:42"])).await;
    assert_eq!(
        positions.get("campaign:42").map(String::as_str),
        Some("0-0")
    );
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(publish(&mut c, "campaign:42", &format!("e{i}")).await);
    }
    for (i, id) in ids.iter().enumerate() {
        let e = event(&mut s).await;
        assert_eq!(&e.id, id);
        assert_eq!(e.topic, "campaign:42");
        assert_eq!(e.payload, format!("e{i}").as_bytes());
        assert_eq!(e.key, format!("k-e{i}"));
        assert!(e.published_at.is_some());
    }
    // Ids increase.
    let parsed: Vec<(u64, u64)> = ids
        .iter()
        .map(|id| {
            let (a, b) = id.split_once('-').expect("ms-seq");
            (a.parse().expect("ms"), b.parse().expect("seq"))
        })
        .collect();
    assert!(parsed.windows(2).all(|w| w[0] < w[1]));
}

async fn a_subscriber_resumes_after_its_last_id_without_loss_or_duplicates(b: Backend) {
    let mut c = Client::new(b.server.channel.clone());
    let (mut s, _) = subscribe(&mut c, topics(&["t"])).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(publish(&mut c, "t", &format!("{i}")).await);
    }
    for id in &ids[..4] {
        assert_eq!(&event(&mut s).await.id, id);
    }
    // The connection goes away mid-stream; more is published meanwhile.
    drop(s);
    for i in 10..15 {
        ids.push(publish(&mut c, "t", &format!("{i}")).await);
    }
    let mut req = topics(&["t"]);
    req.after.insert("t".into(), ids[3].clone());
    let (mut s, positions) = subscribe(&mut c, req).await;
    assert_eq!(positions["t"], ids[3]);
    for i in 15..20 {
        ids.push(publish(&mut c, "t", &format!("{i}")).await);
    }
    for (i, id) in ids.iter().enumerate().skip(4) {
        let e = event(&mut s).await;
        assert_eq!(&e.id, id, "event {i}");
        assert_eq!(e.payload, format!("{i}").as_bytes());
    }
    // Nothing more (no duplicate): the next message is the next publish.
    let last = publish(&mut c, "t", "last").await;
    assert_eq!(event(&mut s).await.id, last);
}

async fn earliest_gets_everything_kept(b: Backend) {
    let mut c = Client::new(b.server.channel.clone());
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(publish(&mut c, "history", &format!("{i}")).await);
    }
    let mut req = topics(&["history"]);
    req.start = pb::subscribe_request::Start::Earliest as i32;
    let (mut s, positions) = subscribe(&mut c, req).await;
    assert_eq!(positions["history"], "0-0");
    for id in &ids {
        assert_eq!(&event(&mut s).await.id, id);
    }
    // LATEST starts after the last one.
    let (_, positions) = subscribe(&mut c, topics(&["history"])).await;
    assert_eq!(positions["history"], ids[4]);
}

async fn an_expired_position_is_reported_not_skipped(b: Backend) {
    let mut c = Client::new(b.server.channel.clone());
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(publish(&mut c, "short:1", &format!("{i}")).await);
    }
    // short:* keeps 5: the 15th on.
    let mut req = topics(&["short:1"]);
    req.after.insert("short:1".into(), ids[2].clone());
    let mut s = c
        .subscribe(req.clone())
        .await
        .expect("subscribe")
        .into_inner();
    assert!(matches!(next(&mut s).await, Some(Kind::Subscribed(_))));
    let status = tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .expect("in time")
        .expect_err("OUT_OF_RANGE");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains(&ids[15]), "{}", status.message());
    let info = status.get_details_error_info().expect("error info");
    assert_eq!(info.metadata.get("first_id"), Some(&ids[15]));

    // With accept_gaps: a Gap, then what is kept.
    req.accept_gaps = true;
    let (mut s, _) = subscribe(&mut c, req).await;
    match next(&mut s).await {
        Some(Kind::Gap(g)) => {
            assert_eq!(g.topic, "short:1");
            assert_eq!(g.after, ids[2]);
            assert_eq!(g.first_id, ids[15]);
        }
        other => panic!("expected a gap, got {other:?}"),
    }
    for id in &ids[15..] {
        assert_eq!(&event(&mut s).await.id, id);
    }
    // A position inside what is kept is no gap.
    let mut req = topics(&["short:1"]);
    req.after.insert("short:1".into(), ids[16].clone());
    let (mut s, _) = subscribe(&mut c, req).await;
    for id in &ids[17..] {
        assert_eq!(&event(&mut s).await.id, id);
    }
    // A topic that holds nothing cannot vouch for a position in it.
    let mut req = topics(&["short:never"]);
    req.after.insert("short:never".into(), ids[19].clone());
    let mut s = c.subscribe(req).await.expect("subscribe").into_inner();
    assert!(matches!(next(&mut s).await, Some(Kind::Subscribed(_))));
    let status = tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .expect("in time")
        .expect_err("OUT_OF_RANGE");
    assert_eq!(status.code(), Code::OutOfRange);
}

async fn a_slow_subscriber_is_cut_off_with_where_to_resume(b: Backend) {
    let mut c = Client::new(b.server.channel.clone());
    // This one reads nothing while 3,000 events of 2 KiB (6 MB, beyond any HTTP/2 window)
    // are published: its buffer fills. (Its own connection: its unread data must not hold up
    // the other's on a shared one.)
    let own = tonic::transport::Endpoint::from_shared(format!("http://{}", b.server.addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let (mut slow, _) = subscribe(&mut Client::new(own), topics(&["busy"])).await;
    // This one keeps up, and must not be held back by the other.
    let (mut fast, _) = subscribe(&mut c, topics(&["busy"])).await;
    let payload = "x".repeat(2048);
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while n < 3000 {
            match next(&mut fast).await {
                Some(Kind::Event(_)) => n += 1,
                other => panic!("the fast subscriber got {other:?}"),
            }
        }
        n
    });
    let mut ids = Vec::new();
    for _ in 0..3000 {
        ids.push(publish(&mut c, "busy", &payload).await);
    }
    assert_eq!(reader.await.expect("fast reader"), 3000);
    let mut got = Vec::new();
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.message())
            .await
            .expect("in time")
        {
            Ok(Some(m)) => match m.kind {
                Some(Kind::Event(e)) => got.push(e.id),
                other => panic!("unexpected {other:?}"),
            },
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(got.len() < 3000, "cut off before the end ({})", got.len());
    // What it got is the start of the topic, in order, and the status says where it stopped.
    assert_eq!(got[..], ids[..got.len()]);
    let info = status.get_details_error_info().expect("error info");
    let resume = info.metadata.get("busy").expect("position");
    let expected = got.last().cloned().unwrap_or_else(|| "0-0".into());
    assert_eq!(resume, &expected);
    // Resuming from there gets the rest.
    let mut req = topics(&["busy"]);
    req.after.insert("busy".into(), resume.clone());
    let (mut s, _) = subscribe(&mut c, req).await;
    for id in &ids[got.len()..] {
        assert_eq!(&event(&mut s).await.id, id);
    }
}

async fn topics_keep_their_own_order(b: Backend) {
    let mut c = Client::new(b.server.channel.clone());
    let (mut s, _) = subscribe(&mut c, topics(&["a", "b"])).await;
    let mut want: HashMap<String, Vec<String>> = HashMap::new();
    for i in 0..30 {
        let t = if i % 3 == 0 { "a" } else { "b" };
        want.entry(t.into())
            .or_default()
            .push(publish(&mut c, t, &format!("{i}")).await);
    }
    let mut got: HashMap<String, Vec<String>> = HashMap::new();
    for _ in 0..30 {
        let e = event(&mut s).await;
        got.entry(e.topic).or_default().push(e.id);
    }
    assert_eq!(got, want);
}

async fn many_subscribers_share_one_feed(b: Backend) {
    let mut c = Client::new(b.server.channel.clone());
    let mut streams = Vec::new();
    for _ in 0..200 {
        streams.push(subscribe(&mut c, topics(&["fan"])).await.0);
    }
    if let Some(url) = &b.redis_url {
        // 200 subscribers, a handful of connections: the pool and one for signals.
        let mut conn = redis::Client::open(url.as_str())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let clients: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut conn)
            .await
            .expect("CLIENT LIST");
        let n = clients.lines().count();
        assert!(n < 24, "{n} connections for 200 subscribers:\n{clients}");
    }
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(publish(&mut c, "fan", &format!("{i}")).await);
    }
    for s in &mut streams {
        for id in &ids {
            assert_eq!(&event(s).await.id, id);
        }
    }
}

async fn flowstate_announces_revoked_sessions_and_invalidations(b: Backend) {
    let mut c = Client::new(b.server.channel.clone());
    let (mut s, _) = subscribe(&mut c, topics(&["flowstate.sessions", "flowstate.cache"])).await;
    let mut sessions = b.server.sessions();
    let created = sessions
        .create_session(pb::CreateSessionRequest {
            user_id: "alice".into(),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner();
    let id = created.id.clone();
    sessions
        .delete_session(pb::DeleteSessionRequest {
            target: Some(pb::delete_session_request::Target::Id(id.clone())),
        })
        .await
        .expect("delete");
    let mut cache = pb::cache_service_client::CacheServiceClient::new(b.server.channel.clone());
    cache
        .invalidate_tags(pb::CacheInvalidateTagsRequest {
            namespace: "ns".into(),
            tags: vec!["campaign:42".into()],
        })
        .await
        .expect("invalidate");
    let deleted = event(&mut s).await;
    assert_eq!(deleted.topic, "flowstate.sessions");
    let body: serde_json::Value = serde_json::from_slice(&deleted.payload).expect("json");
    assert_eq!(body["type"], "session.deleted");
    assert_eq!(body["handle"], created.handle);
    assert_eq!(body["user_id"], "alice");
    assert!(
        !String::from_utf8_lossy(&deleted.payload).contains(&id),
        "never the id"
    );
    let invalidated = event(&mut s).await;
    assert_eq!(invalidated.topic, "flowstate.cache");
    let body: serde_json::Value = serde_json::from_slice(&invalidated.payload).expect("json");
    assert_eq!(body["type"], "cache.tags_invalidated");
    assert_eq!(body["namespace"], "ns");
    assert_eq!(body["tags"][0], "campaign:42");
    // Nobody may publish on flowstate's own topics.
    let refused = c
        .publish(pb::PublishRequest {
            topic: "flowstate.sessions".into(),
            payload: bytes::Bytes::from_static(b"{}"),
            key: String::new(),
        })
        .await
        .expect_err("reserved");
    assert_eq!(refused.code(), Code::InvalidArgument);
}

async fn bad_input_is_rejected(b: Backend) {
    let mut c = Client::new(b.server.channel.clone());
    let big = bytes::Bytes::from(vec![0u8; 64 * 1024 + 1]);
    for (topic, payload, key, field) in [
        ("", bytes::Bytes::new(), String::new(), "topic"),
        ("has space", bytes::Bytes::new(), String::new(), "topic"),
        ("{brace}", bytes::Bytes::new(), String::new(), "topic"),
        ("ok", big, String::new(), "payload"),
        ("ok", bytes::Bytes::new(), "k".repeat(257), "key"),
    ] {
        let s = c
            .publish(pb::PublishRequest {
                topic: topic.into(),
                payload,
                key,
            })
            .await
            .expect_err("refused");
        assert_eq!(s.code(), Code::InvalidArgument, "{field}");
        assert!(s.message().contains(field), "{field}: {}", s.message());
    }
    let mut unknown_after = topics(&["a"]);
    unknown_after.after.insert("b".into(), "1-0".into());
    let mut bad_id = topics(&["a"]);
    bad_id.after.insert("a".into(), "yesterday".into());
    let many = pb::SubscribeRequest {
        topics: (0..65).map(|i| format!("t{i}")).collect(),
        ..Default::default()
    };
    for req in [
        topics(&[]),
        topics(&["bad topic"]),
        unknown_after,
        bad_id,
        many,
    ] {
        let s = c.subscribe(req).await.expect_err("refused");
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    }
    assert!(b.leftovers().await.is_empty(), "{:?}", b.leftovers().await);
}

/// A subscription lives until the client goes or its own deadline (grpc-timeout) passes.
async fn a_subscription_ends_at_its_deadline(b: Backend) {
    let mut c = Client::new(b.server.channel.clone());
    let mut req = tonic::Request::new(topics(&["deadline"]));
    req.set_timeout(Duration::from_millis(300));
    let mut s = c.subscribe(req).await.expect("subscribe").into_inner();
    assert!(matches!(next(&mut s).await, Some(Kind::Subscribed(_))));
    let end = tokio::time::timeout(Duration::from_secs(5), s.message())
        .await
        .expect("ends in time")
        .expect_err("DEADLINE_EXCEEDED");
    assert_eq!(end.code(), Code::DeadlineExceeded, "{end:?}");
}
