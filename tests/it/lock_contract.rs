//! The LockService contract, on every store through real gRPC calls: grants, fencing tokens,
//! expiry, FIFO waiters woken by releases and expiries, semaphores under concurrency.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use crate::common::{Backend, eventually};
use flowstate::proto::v1 as pb;
use pb::lock_service_client::LockServiceClient;
use tonic::{Code, transport::Channel};

type Client = LockServiceClient<Channel>;

contract_tests! {
    a_lock_is_held_by_one_and_fencing_tokens_increase,
    an_expired_holding_is_lost_and_its_token_refused,
    a_waiter_is_woken_by_a_release,
    a_waiter_gets_the_lock_when_the_holding_expires,
    waiters_are_served_in_arrival_order,
    a_semaphore_never_has_more_holders_than_its_limit,
    fencing_tokens_strictly_increase_across_contended_grants,
    a_waiter_that_gives_up_leaves_the_queue,
    bad_input_is_rejected,
}

fn ms(n: u64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: i64::try_from(n / 1000).expect("secs"),
        nanos: i32::try_from((n % 1000) * 1_000_000).expect("nanos"),
    })
}

fn acquire_req(name: &str, ttl_ms: u64, wait_ms: u64, limit: u32) -> pb::AcquireLockRequest {
    pb::AcquireLockRequest {
        name: name.into(),
        ttl: ms(ttl_ms),
        wait: ms(wait_ms),
        limit,
        metadata: HashMap::from([("worker".to_owned(), "w1".to_owned())]),
    }
}

async fn acquire(c: &mut Client, name: &str, ttl_ms: u64, wait_ms: u64) -> pb::AcquireLockResponse {
    c.acquire(acquire_req(name, ttl_ms, wait_ms, 1))
        .await
        .expect("acquire")
        .into_inner()
}

async fn release(c: &mut Client, name: &str, token: &str) -> Result<(), tonic::Status> {
    c.release(pb::ReleaseLockRequest {
        name: name.into(),
        token: token.into(),
    })
    .await
    .map(|_| ())
}

async fn waiters(c: &mut Client, name: &str) -> u32 {
    c.inspect(pb::InspectLockRequest { name: name.into() })
        .await
        .expect("inspect")
        .into_inner()
        .waiters
}

async fn a_lock_is_held_by_one_and_fencing_tokens_increase(b: Backend) {
    let mut c = Client::new(b.server.channel.clone());
    let first = acquire(&mut c, "job:1", 30_000, 0).await;
    assert!(first.acquired && !first.token.is_empty() && first.fencing_token > 0);
    // The store clock in microseconds at least: survives restarts of flowstate and Redis.
    let now_us = u64::try_from(flowstate::time::now_ms()).expect("now") * 1000;
    assert!(
        first.fencing_token + 60_000_000 > now_us,
        "{}",
        first.fencing_token
    );

    let busy = acquire(&mut c, "job:1", 30_000, 0).await;
    assert!(!busy.acquired && busy.token.is_empty());
    assert_eq!(busy.holders, 1);
    let retry = busy.retry_after.expect("retry_after");
    assert!(retry.seconds >= 25 && retry.seconds <= 30, "{retry:?}");

    let state = c
        .inspect(pb::InspectLockRequest {
            name: "job:1".into(),
        })
        .await
        .expect("inspect")
        .into_inner();
    assert_eq!(state.holders.len(), 1);
    let h = &state.holders[0];
    assert_eq!(h.holder_id, first.holder_id);
    assert_eq!(h.fencing_token, first.fencing_token);
    assert_eq!(h.metadata.get("worker").map(String::as_str), Some("w1"));
    assert_eq!(state.last_fencing_token, first.fencing_token);
    assert!(
        !format!("{state:?}").contains(&first.token),
        "Inspect shows no token"
    );

    let extended = c
        .extend(pb::ExtendLockRequest {
            name: "job:1".into(),
            token: first.token.clone(),
            ttl: ms(60_000),
        })
        .await
        .expect("extend")
        .into_inner();
    assert_eq!(extended.fencing_token, first.fencing_token);
    assert!(
        extended.expires_at.expect("expiry").seconds > first.expires_at.expect("expiry").seconds
    );

    // Someone else's token (or a made-up one) cannot release it.
    let other = release(&mut c, "job:1", "not-the-token")
        .await
        .expect_err("refused");
    assert_eq!(other.code(), Code::FailedPrecondition);
    release(&mut c, "job:1", &first.token)
        .await
        .expect("release");
    let again = release(&mut c, "job:1", &first.token)
        .await
        .expect_err("twice");
    assert_eq!(again.code(), Code::FailedPrecondition);

    let second = acquire(&mut c, "job:1", 30_000, 0).await;
    assert!(second.acquired);
    assert!(second.fencing_token > first.fencing_token);
    assert_ne!(second.token, first.token);
    // Names are distinct locks.
    assert!(acquire(&mut c, "job:2", 30_000, 0).await.acquired);
}

async fn an_expired_holding_is_lost_and_its_token_refused(b: Backend) {
    let mut c = Client::new(b.server.channel.clone());
    let old = acquire(&mut c, "short", 150, 0).await;
    assert!(old.acquired);
    // Taken by someone else once it expires (polled: the first holder never releases).
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut taken = None;
    while taken.is_none() && Instant::now() < deadline {
        let r = acquire(&mut c, "short", 30_000, 0).await;
        if r.acquired {
            taken = Some(r);
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let new = taken.expect("new holder");
    assert!(
        new.fencing_token > old.fencing_token,
        "the late holder's token is lower"
    );
    for status in [
        c.extend(pb::ExtendLockRequest {
            name: "short".into(),
            token: old.token.clone(),
            ttl: ms(10_000),
        })
        .await
        .expect_err("extend of a lost lock"),
        c.release(pb::ReleaseLockRequest {
            name: "short".into(),
            token: old.token.clone(),
        })
        .await
        .expect_err("release of a lost lock"),
    ] {
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(
            status.message().contains("not held"),
            "{}",
            status.message()
        );
    }
    // The new holder is untouched.
    release(&mut c, "short", &new.token).await.expect("release");
}

async fn a_waiter_is_woken_by_a_release(b: Backend) {
    let mut c = Client::new(b.server.channel.clone());
    let holder = acquire(&mut c, "wake", 60_000, 0).await;
    assert!(holder.acquired);
    let mut waiter_client = c.clone();
    let waiter = tokio::spawn(async move {
        let start = Instant::now();
        let r = acquire(&mut waiter_client, "wake", 10_000, 4_000).await;
        (r, start.elapsed())
    });
    assert!(
        eventually(Duration::from_secs(3), || {
            let mut c = c.clone();
            async move { waiters(&mut c, "wake").await == 1 }
        })
        .await,
        "the waiter is queued"
    );
    release(&mut c, "wake", &holder.token)
        .await
        .expect("release");
    let (r, waited) = waiter.await.expect("waiter");
    assert!(
        r.acquired,
        "granted after the release, within its wait ({waited:?})"
    );
    assert!(r.fencing_token > holder.fencing_token);
    assert_eq!(waiters(&mut c, "wake").await, 0);
}

async fn a_waiter_gets_the_lock_when_the_holding_expires(b: Backend) {
    let mut c = Client::new(b.server.channel.clone());
    let holder = acquire(&mut c, "lapse", 400, 0).await;
    assert!(holder.acquired);
    let r = acquire(&mut c, "lapse", 10_000, 4_000).await;
    assert!(r.acquired, "granted when the holding expired");
    assert!(r.fencing_token > holder.fencing_token);
}

async fn waiters_are_served_in_arrival_order(b: Backend) {
    let mut c = Client::new(b.server.channel.clone());
    let holder = acquire(&mut c, "fifo", 60_000, 0).await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for who in 0..3u32 {
        let (mut c2, order) = (c.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let r = acquire(&mut c2, "fifo", 60_000, 4_500).await;
            assert!(r.acquired, "waiter {who} granted");
            order.lock().expect("order").push(who);
            // Hold briefly so the next in line must wait for this release.
            tokio::time::sleep(Duration::from_millis(50)).await;
            release(&mut c2, "fifo", &r.token).await.expect("release");
        }));
        // Each arrives (is queued) before the next.
        assert!(
            eventually(Duration::from_secs(3), || {
                let mut c = c.clone();
                async move { waiters(&mut c, "fifo").await == who + 1 }
            })
            .await
        );
    }
    release(&mut c, "fifo", &holder.token)
        .await
        .expect("release");
    for t in tasks {
        t.await.expect("waiter");
    }
    assert_eq!(*order.lock().expect("order"), vec![0, 1, 2]);
}

async fn a_semaphore_never_has_more_holders_than_its_limit(b: Backend) {
    let c = Client::new(b.server.channel.clone());
    let inside = Arc::new(AtomicU32::new(0));
    let most = Arc::new(AtomicU32::new(0));
    let grants = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let (mut c, inside, most, grants) =
            (c.clone(), inside.clone(), most.clone(), grants.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..6 {
                let r = c
                    .acquire(acquire_req("llm", 10_000, 4_000, 4))
                    .await
                    .expect("acquire")
                    .into_inner();
                assert!(r.acquired, "a slot within the wait");
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                grants.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                release(&mut c, "llm", &r.token).await.expect("release");
            }
        }));
    }
    for t in tasks {
        t.await.expect("worker");
    }
    assert_eq!(grants.load(Ordering::SeqCst), 72);
    let most = most.load(Ordering::SeqCst);
    assert!(most <= 4, "{most} holders of a semaphore of 4");
    assert!(most >= 2, "the semaphore let several in at once ({most})");
}

async fn fencing_tokens_strictly_increase_across_contended_grants(b: Backend) {
    let c = Client::new(b.server.channel.clone());
    let last = Arc::new(Mutex::new(0u64));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (mut c, last) = (c.clone(), last.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                let r = acquire(&mut c, "fence", 10_000, 4_000).await;
                assert!(r.acquired);
                {
                    // Only the holder writes here: each grant's token must beat the last.
                    let mut last = last.lock().expect("last");
                    assert!(
                        r.fencing_token > *last,
                        "{} after {}",
                        r.fencing_token,
                        *last
                    );
                    *last = r.fencing_token;
                }
                release(&mut c, "fence", &r.token).await.expect("release");
            }
        }));
    }
    for t in tasks {
        t.await.expect("worker");
    }
}

async fn a_waiter_that_gives_up_leaves_the_queue(b: Backend) {
    let mut c = Client::new(b.server.channel.clone());
    let holder = acquire(&mut c, "patience", 60_000, 0).await;
    let r = acquire(&mut c, "patience", 1_000, 300).await;
    assert!(!r.acquired, "still held after the wait");
    assert!(
        eventually(Duration::from_secs(2), || {
            let mut c = c.clone();
            async move { waiters(&mut c, "patience").await == 0 }
        })
        .await,
        "it left the queue"
    );
    // So a newcomer is not stuck behind it once the lock is free.
    release(&mut c, "patience", &holder.token)
        .await
        .expect("release");
    assert!(acquire(&mut c, "patience", 1_000, 0).await.acquired);
}

async fn bad_input_is_rejected(b: Backend) {
    let mut c = Client::new(b.server.channel.clone());
    let mut too_much = acquire_req("x", 1_000, 0, 1);
    too_much.metadata = (0..17).map(|i| (format!("k{i}"), "v".into())).collect();
    for (req, field) in [
        (acquire_req("", 1_000, 0, 1), "name"),
        (acquire_req(&"n".repeat(257), 1_000, 0, 1), "name"),
        (acquire_req("bad\nname", 1_000, 0, 1), "name"),
        (acquire_req("x", 0, 0, 1), "ttl"),
        (acquire_req("x", 5, 0, 1), "ttl"),
        (acquire_req("x", 2 * 3600 * 1000, 0, 1), "ttl"),
        (acquire_req("x", 1_000, 0, 1_000_000), "limit"),
        (too_much, "metadata"),
    ] {
        let s = c.acquire(req).await.expect_err("refused");
        assert_eq!(s.code(), Code::InvalidArgument, "{field}: {s:?}");
        assert!(s.message().contains(field), "{field}: {}", s.message());
    }
    let s = c
        .extend(pb::ExtendLockRequest {
            name: "x".into(),
            token: String::new(),
            ttl: ms(1_000),
        })
        .await
        .expect_err("no token");
    assert_eq!(s.code(), Code::InvalidArgument);
    // Nothing was written by the refused calls.
    assert!(b.leftovers().await.is_empty(), "{:?}", b.leftovers().await);
}
