//! Every Lua script touches keys of one Redis Cluster slot, including the keys it builds
//! itself, so it runs unchanged on a Cluster. Checked on what really runs: a workload through
//! every RPC against a private Redis, watched with MONITOR, which shows each EVALSHA with its
//! declared keys followed by the commands the script ran (`[0 lua]`). The slot is CRC16 of the
//! hash tag, computed here.
//!
//! The one exception is a rate-limit Check naming several counters: one script over several
//! slots, as documented for standalone Redis (on a Cluster the same Check reserves in each
//! slot and refunds, one script per slot).

use std::{collections::HashSet, num::NonZeroU64, time::Duration};

use crate::common::{
    RedisServer, TestServer,
    every_method::{self, call_every_method},
    test_config,
};
use bytes::Bytes;
use flowstate::{
    proto::v1 as pb,
    services::Wiring,
    store::{Backend, keys::slot, redis::RedisBackend},
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tonic_health::pb::health_check_response::ServingStatus;

/// One command of the MONITOR stream: whether a script ran it, and its words.
struct Seen {
    from_script: bool,
    words: Vec<Vec<u8>>,
}

/// Parses a MONITOR line: `<time> [<db> <client or lua>] "WORD" "WORD" ...`.
fn parse(line: &str) -> Option<Seen> {
    let open = line.find('[')?;
    let close = open + line[open..].find(']')?;
    let from_script = line[open..close].ends_with("lua");
    let mut words = Vec::new();
    let mut bytes = line[close + 1..].bytes().peekable();
    while let Some(b) = bytes.next() {
        if b != b'"' {
            continue;
        }
        let mut word = Vec::new();
        while let Some(c) = bytes.next() {
            match c {
                b'"' => break,
                b'\\' => match bytes.next()? {
                    b'n' => word.push(b'\n'),
                    b'r' => word.push(b'\r'),
                    b't' => word.push(b'\t'),
                    b'a' => word.push(7),
                    b'b' => word.push(8),
                    b'x' => {
                        let hex = [bytes.next()?, bytes.next()?];
                        word.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
                    }
                    other => word.push(other),
                },
                other => word.push(other),
            }
        }
        words.push(word);
    }
    Some(Seen { from_script, words })
}

/// The keys a command a script runs touches; panics on a command this table does not know.
fn keys_of(words: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let name = String::from_utf8_lossy(&words[0]).to_ascii_uppercase();
    match name.as_str() {
        // PUBLISH names a channel, not a key (a Cluster delivers it to every node).
        "TIME" | "PUBLISH" => Vec::new(),
        "XINFO" | "XGROUP" => vec![words[2].clone()],
        // XREADGROUP GROUP g c [COUNT n] STREAMS key... id...: the keys are the first half of
        // what follows STREAMS.
        "XREADGROUP" => {
            let at = words
                .iter()
                .position(|w| w.eq_ignore_ascii_case(b"STREAMS"))
                .expect("XREADGROUP names its streams");
            let rest = &words[at + 1..];
            rest[..rest.len() / 2].to_vec()
        }
        "DEL" | "UNLINK" | "EXISTS" => words[1..].to_vec(),
        "RENAME" => words[1..3].to_vec(),
        "GET" | "SET" | "HGET" | "HSET" | "HMGET" | "HGETALL" | "HDEL" | "HEXISTS" | "HSTRLEN"
        | "PEXPIRE" | "PTTL" | "PERSIST" | "ZADD" | "ZREM" | "ZRANGE" | "ZRANGEBYSCORE"
        | "ZREMRANGEBYSCORE" | "ZCARD" | "ZSCAN" | "ZRANK" | "ZCOUNT" | "ZSCORE" | "XADD"
        | "XLEN" | "XRANGE" | "XREVRANGE" | "XTRIM" | "XSETID" | "HLEN" | "XACK" | "XDEL"
        | "XPENDING" | "ZREVRANGE" | "HINCRBY" | "ZINCRBY" | "INCR" | "INCRBY" => {
            vec![words[1].clone()]
        }
        "PFADD" => vec![words[1].clone()],
        // ZUNIONSTORE dest numkeys key...
        "ZUNIONSTORE" => {
            let n: usize = String::from_utf8_lossy(&words[2]).parse().expect("numkeys");
            let mut keys = vec![words[1].clone()];
            keys.extend(words[3..3 + n].iter().cloned());
            keys
        }
        other => panic!("a script ran {other}: add it to keys_of"),
    }
}

async fn workload(server: &TestServer) {
    let mut s = server.sessions();
    let created = s
        .create_session(pb::CreateSessionRequest {
            user_id: "alice".into(),
            data: [("k".to_owned(), Bytes::from_static(b"v"))].into(),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner();
    let other = s
        .create_session(pb::CreateSessionRequest {
            user_id: "alice".into(),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner();
    s.get_session(pb::GetSessionRequest {
        id: created.id.clone(),
        touch: true,
    })
    .await
    .expect("get");
    s.update_session(pb::UpdateSessionRequest {
        id: created.id.clone(),
        set: [("n".to_owned(), Bytes::from_static(b"1"))].into(),
        remove: vec!["k".into()],
        expected_version: 1,
    })
    .await
    .expect("update");
    s.touch_session(pb::TouchSessionRequest {
        id: created.id.clone(),
    })
    .await
    .expect("touch");
    let rotated = s
        .rotate_session(pb::RotateSessionRequest { id: created.id })
        .await
        .expect("rotate")
        .into_inner();
    s.list_user_sessions(pb::ListUserSessionsRequest {
        user_id: "alice".into(),
    })
    .await
    .expect("list");
    s.delete_session(pb::DeleteSessionRequest {
        target: Some(pb::delete_session_request::Target::Id(other.id)),
    })
    .await
    .expect("delete");
    s.delete_user_sessions(pb::DeleteUserSessionsRequest {
        user_id: "alice".into(),
        keep_handle: Some(rotated.handle),
    })
    .await
    .expect("delete user");

    let mut c = pb::cache_service_client::CacheServiceClient::new(server.channel.clone());
    let set = |key: &str, tags: &[&str], token: &str| pb::CacheSetRequest {
        namespace: "ns".into(),
        key: key.into(),
        value: Bytes::from_static(b"v"),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        lease_token: token.into(),
        ..Default::default()
    };
    c.set(set("a", &["t1", "t2"], "")).await.expect("set");
    c.set(set("b", &[], "")).await.expect("set");
    let token = c
        .get(pb::CacheGetRequest {
            namespace: "ns".into(),
            key: "leased".into(),
            lease: true,
        })
        .await
        .expect("lease")
        .into_inner()
        .lease_token;
    c.set(set("leased", &["t1"], &token))
        .await
        .expect("leased set");
    c.get_many(pb::CacheGetManyRequest {
        namespace: "ns".into(),
        keys: vec!["a".into(), "b".into(), "c".into()],
    })
    .await
    .expect("get many");
    c.set_many(pb::CacheSetManyRequest {
        namespace: "ns".into(),
        entries: vec![pb::CacheSetManyEntry {
            key: "m".into(),
            value: Bytes::from_static(b"v"),
            tags: vec!["t2".into()],
            ..Default::default()
        }],
    })
    .await
    .expect("set many");
    c.delete(pb::CacheDeleteRequest {
        namespace: "ns".into(),
        keys: vec!["b".into()],
    })
    .await
    .expect("delete");
    c.invalidate_tags(pb::CacheInvalidateTagsRequest {
        namespace: "ns".into(),
        tags: vec!["t1".into(), "t2".into()],
    })
    .await
    .expect("invalidate tags");
    c.invalidate_namespace(pb::CacheInvalidateNamespaceRequest {
        namespace: "ns".into(),
    })
    .await
    .expect("invalidate namespace");

    let mut r = pb::rate_limit_service_client::RateLimitServiceClient::new(server.channel.clone());
    let inline = |key: &str, algorithm: pb::Algorithm| pb::LimitCheck {
        key: key.into(),
        limit: Some(pb::limit_check::Limit::Policy(pb::LimitPolicy {
            algorithm: algorithm.into(),
            limit: 5,
            period: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            ..Default::default()
        })),
    };
    r.check(pb::CheckRequest {
        checks: vec![inline("u1", pb::Algorithm::Gcra)],
        ..Default::default()
    })
    .await
    .expect("check");
    r.check(pb::CheckRequest {
        checks: vec![
            inline("u1", pb::Algorithm::SlidingWindow),
            inline("tenant", pb::Algorithm::FixedWindow),
        ],
        ..Default::default()
    })
    .await
    .expect("two-counter check");

    // Locks: a grant, a busy try, a waiter that gives up (and leaves the queue), extend,
    // inspect, release.
    let mut l = pb::lock_service_client::LockServiceClient::new(server.channel.clone());
    let acquire = |wait_ms: i32| pb::AcquireLockRequest {
        name: "job:1".into(),
        ttl: Some(prost_types::Duration {
            seconds: 10,
            nanos: 0,
        }),
        wait: Some(prost_types::Duration {
            seconds: 0,
            nanos: wait_ms * 1_000_000,
        }),
        limit: 1,
        metadata: Default::default(),
    };
    let held = l.acquire(acquire(0)).await.expect("acquire").into_inner();
    assert!(
        !l.acquire(acquire(100))
            .await
            .expect("wait")
            .into_inner()
            .acquired
    );
    l.extend(pb::ExtendLockRequest {
        name: "job:1".into(),
        token: held.token.clone(),
        ttl: Some(prost_types::Duration {
            seconds: 20,
            nanos: 0,
        }),
    })
    .await
    .expect("extend");
    l.inspect(pb::InspectLockRequest {
        name: "job:1".into(),
    })
    .await
    .expect("inspect");
    l.release(pb::ReleaseLockRequest {
        name: "job:1".into(),
        token: held.token,
    })
    .await
    .expect("release");

    // Events: publish, a subscription that resumes (head, read), kept alive (touch).
    let mut e = pb::event_service_client::EventServiceClient::new(server.channel.clone());
    let publish = |payload: &'static [u8]| pb::PublishRequest {
        topic: "campaign:1".into(),
        payload: Bytes::from_static(payload),
        key: String::new(),
    };
    let first = e
        .publish(publish(b"1"))
        .await
        .expect("publish")
        .into_inner()
        .id;
    let mut stream = e
        .subscribe(pb::SubscribeRequest {
            topics: vec!["campaign:1".into()],
            after: [("campaign:1".to_owned(), first)].into(),
            ..Default::default()
        })
        .await
        .expect("subscribe")
        .into_inner();
    stream.message().await.expect("subscribed");
    // The feed keeps its topic alive once a second (max_age / 4, at least 1 s).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    e.publish(publish(b"2")).await.expect("publish");
    stream.message().await.expect("event");
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Queues: enqueue, fetch, extend, fail (dead on its only attempt), list, retry and discard
    // the dead, give back, ack, stats, pause and resume.
    let mut q = pb::queue_service_client::QueueServiceClient::new(server.channel.clone());
    q.enqueue(pb::EnqueueRequest {
        queue: "emails".into(),
        payload: Bytes::from_static(b"x"),
        options: Some(pb::JobOptions {
            max_attempts: 1,
            ..Default::default()
        }),
    })
    .await
    .expect("enqueue");
    let fetch = || pb::FetchRequest {
        queues: vec!["emails".into()],
        max: 1,
        wait: None,
    };
    let job = q
        .fetch(fetch())
        .await
        .expect("fetch")
        .into_inner()
        .jobs
        .remove(0);
    let lease = |job: &pb::Job| (job.queue.clone(), job.id.clone(), job.lease_token.clone());
    let (queue, job_id, lease_token) = lease(&job);
    q.extend(pb::ExtendJobRequest {
        queue: queue.clone(),
        job_id: job_id.clone(),
        lease_token: lease_token.clone(),
        timeout: None,
    })
    .await
    .expect("extend");
    q.fail(pb::FailRequest {
        queue: queue.clone(),
        job_id: job_id.clone(),
        lease_token,
        error: "boom".into(),
        retry_after: None,
    })
    .await
    .expect("fail");
    q.list_dead(pb::ListDeadRequest {
        queue: queue.clone(),
        limit: 10,
    })
    .await
    .expect("dead");
    q.retry(pb::RetryDeadRequest {
        queue: queue.clone(),
        job_ids: vec![job_id],
        all: false,
    })
    .await
    .expect("retry");
    let job = q
        .fetch(fetch())
        .await
        .expect("fetch")
        .into_inner()
        .jobs
        .remove(0);
    let (queue, job_id, lease_token) = lease(&job);
    q.give_back(pb::GiveBackRequest {
        queue: queue.clone(),
        job_id,
        lease_token,
    })
    .await
    .expect("give back");
    let job = q
        .fetch(fetch())
        .await
        .expect("fetch")
        .into_inner()
        .jobs
        .remove(0);
    let (queue, job_id, lease_token) = lease(&job);
    q.ack(pb::AckRequest {
        queue: queue.clone(),
        job_id,
        lease_token,
    })
    .await
    .expect("ack");
    q.discard(pb::DiscardDeadRequest {
        queue: queue.clone(),
        job_ids: vec![],
        all: true,
    })
    .await
    .expect("discard");
    q.stats(pb::QueueStatsRequest {
        queue: queue.clone(),
    })
    .await
    .expect("stats");
    q.pause(pb::PauseQueueRequest {
        queue: queue.clone(),
    })
    .await
    .expect("pause");
    q.resume(pb::ResumeQueueRequest { queue })
        .await
        .expect("resume");

    let mut u = pb::usage_service_client::UsageServiceClient::new(server.channel.clone());
    let events = (0..20)
        .map(|i| pb::UsageEvent {
            metric: "llm_tokens".into(),
            subject: format!("ws-{}", i % 5),
            amount: Some(3),
            dimensions: [("model".to_owned(), format!("m{}", i % 2))].into(),
            unique: format!("user-{i}"),
        })
        .collect();
    u.record(pb::RecordRequest {
        events,
        ..Default::default()
    })
    .await
    .expect("record");
    u.top(pb::TopRequest {
        metric: "llm_tokens".into(),
        window: Some(prost_types::Duration {
            seconds: 7200,
            nanos: 0,
        }),
        n: 3,
        granularity: pb::Granularity::Hour as i32,
    })
    .await
    .expect("top");
    let mut r = pb::rate_limit_service_client::RateLimitServiceClient::new(server.channel.clone());
    r.check(pb::CheckRequest {
        checks: vec![pb::LimitCheck {
            limit: Some(pb::limit_check::Limit::Name("tokens".into())),
            key: "ws-1".into(),
        }],
        cost: Some(10),
        dry_run: false,
    })
    .await
    .expect("usage limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_script_touches_one_slot() {
    let redis = RedisServer::start().await;
    let mut config = test_config();
    config.redis.url = Some(redis.url());
    // A feed keeps its topic alive every max_age / 4 (at least 1 s): within the workload.
    config.events.max_age = Duration::from_secs(4);
    // A usage limit, so that its reading script runs.
    config.ratelimit.usage_limits.insert(
        "tokens".into(),
        flowstate::config::UsageLimitConfig {
            metric: "llm_tokens".into(),
            limit: NonZeroU64::new(1000).expect("non-zero"),
            window: flowstate::config::UsageWindow::Day,
            failure_mode: flowstate::ratelimit::FailureMode::Closed,
        },
    );
    // Names the every-method pass uses: a named limit, a semantic namespace.
    every_method::configure(&mut config, "probe");
    // The scripts the server registers, by SHA1 (the same sources give the same SHA1s): every
    // registered service mounted on a backend of its own, as the server mounts them.
    let backend = RedisBackend::new(&config.redis).expect("backend");
    let wrapped = Backend::Redis(backend.clone());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut wiring = Wiring::new(&config, &wrapped, stopped).expect("wiring");
    wiring.mount_all().expect("every service mounts");
    let (_, tasks, _) = wiring.finish();
    let _ = stop.send(true);
    for (_, task) in tasks {
        task.await.expect("task");
    }
    let scripts = backend.scripts();
    let name_of = |sha: &[u8]| -> &'static str {
        scripts
            .iter()
            .find(|(_, h)| h.as_bytes() == sha)
            .map_or("an unregistered script", |(n, _)| *n)
    };

    let server = TestServer::start(config).await;
    assert!(
        server
            .wait_health("readiness", ServingStatus::Serving)
            .await
    );
    let monitor = tokio::net::TcpStream::connect(("127.0.0.1", redis.port))
        .await
        .expect("connect");
    let (read, mut write) = monitor.into_split();
    write.write_all(b"MONITOR\r\n").await.expect("MONITOR");
    let mut lines = BufReader::new(read).lines();
    assert_eq!(
        lines.next_line().await.expect("read").as_deref(),
        Some("+OK")
    );

    workload(&server).await;
    // And every method of every registered service, with a configured name and a crafted one.
    for name in ["probe", "{probe}:x"] {
        call_every_method(&server.channel, None, name, |m| format!("v{m}")).await;
    }
    let mut admin = redis.client().await;
    let _: String = redis::cmd("ECHO")
        .arg("end-of-workload")
        .query_async(&mut admin)
        .await
        .expect("ECHO");

    let mut seen_scripts = HashSet::new();
    let mut invocations = 0;
    let mut multi_slot = Vec::new();
    // The script being run: its name, declared keys, and every key it touched.
    let mut current: Option<(&'static str, usize, Vec<Vec<u8>>)> = None;
    let mut finish = |current: Option<(&'static str, usize, Vec<Vec<u8>>)>| {
        if let Some((name, declared, keys)) = current {
            let slots: HashSet<u16> = keys.iter().map(|k| slot(k)).collect();
            if slots.len() > 1 {
                multi_slot.push((name, declared, keys));
            }
        }
    };
    loop {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("MONITOR output")
            .expect("read")
            .expect("MONITOR stream open");
        let Some(seen) = parse(&line) else { continue };
        if seen.words.is_empty() {
            continue;
        }
        if seen.from_script {
            let (_, _, keys) = current
                .as_mut()
                .expect("a script command follows its EVALSHA");
            keys.extend(keys_of(&seen.words));
            continue;
        }
        finish(current.take());
        let name = String::from_utf8_lossy(&seen.words[0]).to_ascii_uppercase();
        if name == "ECHO" && seen.words.get(1).is_some_and(|w| w == b"end-of-workload") {
            break;
        }
        if name == "EVALSHA" || name == "EVAL" {
            let script = name_of(&seen.words[1]);
            let numkeys: usize = String::from_utf8_lossy(&seen.words[2])
                .parse()
                .expect("numkeys");
            let declared = seen.words[3..3 + numkeys].to_vec();
            seen_scripts.insert(script);
            invocations += 1;
            current = Some((script, numkeys, declared));
        }
    }
    // A reservation and its refund run only for a Check over several Cluster slots, so not
    // here; tests/cluster.rs runs them on a real Cluster, where a key outside the slot of a
    // script's first key fails the script.
    for (name, _) in &scripts {
        if matches!(*name, "ratelimit.reserve" | "ratelimit.refund") {
            continue;
        }
        assert!(seen_scripts.contains(name), "the workload never ran {name}");
    }
    // The two-counter Check is the only script allowed to span slots, as documented.
    let spanning: Vec<_> = multi_slot
        .iter()
        .filter(|(name, declared, _)| !(*name == "ratelimit.check" && *declared > 1))
        .map(|(name, _, keys)| {
            let keys: Vec<_> = keys
                .iter()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect();
            format!("{name}: {keys:?}")
        })
        .collect();
    assert!(spanning.is_empty(), "scripts spanning slots: {spanning:#?}");
    assert!(
        multi_slot
            .iter()
            .any(|(name, _, _)| *name == "ratelimit.check"),
        "the two-counter check should have spanned two slots (the test would not see a violation)"
    );
    eprintln!(
        "{invocations} script runs of {} scripts checked, every one within one slot",
        scripts.len()
    );
}
