//! The QueueService contract, on every store through real gRPC calls: leases, acks, retries
//! with backoff, dead jobs, scheduling, priorities, unique keys, pause, bounds, and workers
//! racing for the same jobs.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::common::Backend;
use bytes::Bytes;
use flowstate::proto::v1 as pb;
use pb::queue_service_client::QueueServiceClient;
use tonic::{Code, transport::Channel};

type Client = QueueServiceClient<Channel>;

contract_tests! {
    a_job_is_leased_once_and_gone_when_acknowledged,
    a_waiting_fetch_is_woken_by_an_enqueue,
    a_delayed_job_is_ready_at_its_time_not_before,
    priorities_and_queue_order_decide_what_is_fetched_first,
    a_failing_job_retries_with_growing_backoff_then_dies_and_retry_revives_it,
    an_expired_lease_goes_to_another_worker_and_the_old_token_is_refused,
    extend_keeps_a_lease_and_give_back_does_not_count_an_attempt,
    a_lease_that_runs_out_on_the_last_attempt_makes_the_job_dead,
    a_unique_key_under_concurrent_enqueues_gives_one_job,
    a_paused_queue_hands_out_nothing_until_resumed,
    a_full_queue_refuses_a_batch_whole with |c: &mut flowstate::config::Config| c.queues.max_jobs = std::num::NonZeroU64::new(5).expect("non-zero"),
    concurrent_workers_never_share_a_job,
    a_queue_left_with_only_dead_jobs_expires_with_them with |c: &mut flowstate::config::Config| c.queues.dead_max_age = std::time::Duration::from_secs(1),
    bad_input_is_rejected,
}

fn ms(n: u64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: i64::try_from(n / 1000).expect("secs"),
        nanos: i32::try_from((n % 1000) * 1_000_000).expect("nanos"),
    })
}

fn options() -> pb::JobOptions {
    pb::JobOptions::default()
}

async fn enqueue(
    c: &mut Client,
    queue: &str,
    payload: &str,
    o: pb::JobOptions,
) -> pb::EnqueueResponse {
    c.enqueue(pb::EnqueueRequest {
        queue: queue.into(),
        payload: Bytes::from(payload.to_owned()),
        options: Some(o),
    })
    .await
    .expect("enqueue")
    .into_inner()
}

async fn fetch(c: &mut Client, queues: &[&str], max: u32, wait_ms: u64) -> Vec<pb::Job> {
    c.fetch(pb::FetchRequest {
        queues: queues.iter().map(|q| (*q).to_owned()).collect(),
        max,
        wait: ms(wait_ms),
    })
    .await
    .expect("fetch")
    .into_inner()
    .jobs
}

async fn ack(c: &mut Client, job: &pb::Job) -> Result<(), tonic::Status> {
    c.ack(pb::AckRequest {
        queue: job.queue.clone(),
        job_id: job.id.clone(),
        lease_token: job.lease_token.clone(),
    })
    .await
    .map(drop)
}

async fn fail(c: &mut Client, job: &pb::Job, error: &str) -> pb::FailResponse {
    c.fail(pb::FailRequest {
        queue: job.queue.clone(),
        job_id: job.id.clone(),
        lease_token: job.lease_token.clone(),
        error: error.into(),
        retry_after: None,
    })
    .await
    .expect("fail")
    .into_inner()
}

async fn stats(c: &mut Client, queue: &str) -> pb::QueueStatsResponse {
    c.stats(pb::QueueStatsRequest {
        queue: queue.into(),
    })
    .await
    .expect("stats")
    .into_inner()
}

fn ts_ms(t: Option<prost_types::Timestamp>) -> i64 {
    let t = t.expect("timestamp");
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
}

async fn a_job_is_leased_once_and_gone_when_acknowledged(b: Backend) {
    let mut c = Client::new(b.server.channel.clone());
    let e = enqueue(&mut c, "emails", "hello", options()).await;
    assert_eq!(e.job_id.len(), 32);
    assert!(!e.duplicate);
    let s = stats(&mut c, "emails").await;
    assert_eq!((s.ready, s.scheduled, s.in_flight, s.dead), (1, 0, 0, 0));

    let jobs = fetch(&mut c, &["emails"], 10, 0).await;
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert_eq!(job.id, e.job_id);
    assert_eq!(job.payload, Bytes::from_static(b"hello"));
    assert_eq!((job.attempt, job.max_attempts), (1, 5));
    assert!(!job.lease_token.is_empty() && job.last_error.is_empty());
    assert_eq!(job.queue, "emails");
    // The default timeout (60 s) from the store's clock.
    let lease = ts_ms(job.lease_expires_at) - ts_ms(job.enqueued_at);
    assert!((59_000..=61_000).contains(&lease), "{lease}");

    // Leased: nobody else gets it.
    assert!(fetch(&mut c, &["emails"], 10, 0).await.is_empty());
    let s = stats(&mut c, "emails").await;
    assert_eq!((s.ready, s.in_flight), (0, 1));

    ack(&mut c, job).await.expect("ack");
    let again = ack(&mut c, job).await.expect_err("twice");
    assert_eq!(again.code(), Code::FailedPrecondition);
    let s = stats(&mut c, "emails").await;
    assert_eq!((s.ready, s.scheduled, s.in_flight, s.dead), (0, 0, 0, 0));
    assert!(fetch(&mut c, &["emails"], 10, 0).await.is_empty());
    // Live jobs have no TTL; a drained queue leaves no key behind (its stream neither).
    let left = b.leftovers().await;
    assert!(left.is_empty(), "{left:?}");
}

async fn a_waiting_fetch_is_woken_by_an_enqueue(b: Backend) {
    let mut c = Client::new(b.server.channel.clone());
    let mut waiter = c.clone();
    let started = Instant::now();
    let got = tokio::spawn(async move { fetch(&mut waiter, &["wake"], 1, 10_000).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    enqueue(&mut c, "wake", "now", options()).await;
    let jobs = got.await.expect("fetch");
    assert_eq!(jobs.len(), 1, "woken with the job");
    // Woken by the enqueue, long before its 10 s wait ran out.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    // A wait with nothing to take ends empty at its end.
    let empty = Instant::now();
    assert!(fetch(&mut c, &["wake"], 1, 300).await.is_empty());
    assert!(empty.elapsed() >= Duration::from_millis(250));
}

async fn a_delayed_job_is_ready_at_its_time_not_before(b: Backend) {
    let mut c = Client::new(b.server.channel.clone());
    let e = enqueue(
        &mut c,
        "later",
        "x",
        pb::JobOptions {
            delay: ms(600),
            ..options()
        },
    )
    .await;
    assert!(fetch(&mut c, &["later"], 1, 0).await.is_empty(), "not yet");
    let s = stats(&mut c, "later").await;
    assert_eq!((s.ready, s.scheduled), (0, 1));
    // A waiting fetch wakes at the job's time (no enqueue wakes it).
    let jobs = fetch(&mut c, &["later"], 1, 5_000).await;
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert_eq!(job.id, e.job_id);
    let due = ts_ms(e.run_at);
    assert!(due - ts_ms(job.enqueued_at) >= 600);
    // Leased at or after its time, by the store's clock.
    let leased = ts_ms(job.lease_expires_at) - 60_000;
    assert!(leased >= due, "leased {leased} before due {due}");

    // run_at in the past means now; in the future, then.
    let past = enqueue(
        &mut c,
        "later",
        "past",
        pb::JobOptions {
            run_at: Some(prost_types::Timestamp {
                seconds: 1,
                nanos: 0,
            }),
            ..options()
        },
    )
    .await;
    let jobs = fetch(&mut c, &["later"], 1, 0).await;
    assert_eq!(jobs[0].id, past.job_id);
}

async fn priorities_and_queue_order_decide_what_is_fetched_first(b: Backend) {
    let mut c = Client::new(b.server.channel.clone());
    let prio = |p: pb::JobPriority| pb::JobOptions {
        priority: p as i32,
        ..options()
    };
    let low = enqueue(&mut c, "work", "low", prio(pb::JobPriority::Low)).await;
    let normal = enqueue(&mut c, "work", "normal", options()).await;
    let high = enqueue(&mut c, "work", "high", prio(pb::JobPriority::High)).await;
    let normal2 = enqueue(&mut c, "work", "normal2", prio(pb::JobPriority::Normal)).await;
    let urgent = enqueue(&mut c, "urgent", "u", options()).await;
    let jobs = fetch(&mut c, &["urgent", "work"], 10, 0).await;
    let ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            urgent.job_id.as_str(),
            high.job_id.as_str(),
            normal.job_id.as_str(),
            normal2.job_id.as_str(),
            low.job_id.as_str()
        ]
    );
    assert_eq!(jobs[1].priority, pb::JobPriority::High as i32);
    assert_eq!(jobs[4].priority, pb::JobPriority::Low as i32);
    // `max` bounds a fetch.
    for i in 0..5 {
        enqueue(&mut c, "many", &i.to_string(), options()).await;
    }
    assert_eq!(fetch(&mut c, &["many"], 3, 0).await.len(), 3);
    assert_eq!(fetch(&mut c, &["many"], 3, 0).await.len(), 2);
}

async fn a_failing_job_retries_with_growing_backoff_then_dies_and_retry_revives_it(b: Backend) {
    let mut c = Client::new(b.server.channel.clone());
    let e = enqueue(
        &mut c,
        "flaky",
        "p",
        pb::JobOptions {
            max_attempts: 3,
            backoff: ms(200),
            max_backoff: ms(10_000),
            ..options()
        },
    )
    .await;
    let mut delays = Vec::new();
    let mut job = fetch(&mut c, &["flaky"], 1, 0).await.remove(0);
    for attempt in 1..=2u32 {
        assert_eq!(job.attempt, attempt);
        let failed_at = flowstate::time::now_ms();
        let f = fail(&mut c, &job, &format!("boom {attempt}")).await;
        assert!(!f.dead);
        let retry_at = ts_ms(f.retry_at);
        delays.push(retry_at - failed_at);
        assert!(
            fetch(&mut c, &["flaky"], 1, 0).await.is_empty(),
            "not before its backoff"
        );
        let s = stats(&mut c, "flaky").await;
        assert_eq!((s.ready, s.scheduled, s.in_flight), (0, 1, 0));
        job = fetch(&mut c, &["flaky"], 1, 5_000).await.remove(0);
        assert_eq!(job.id, e.job_id);
        assert_eq!(job.last_error, format!("boom {attempt}"));
    }
    // Equal jitter: the first retry waits 100-200 ms, the second 200-400 ms (a little slack for
    // the two clocks the test compares).
    assert!(delays[0] >= 80 && delays[0] <= 230, "{delays:?}");
    assert!(delays[1] >= 180 && delays[1] <= 430, "{delays:?}");
    assert_eq!(job.attempt, 3);
    let f = fail(&mut c, &job, "final boom").await;
    assert!(f.dead && f.retry_at.is_none());
    assert!(fetch(&mut c, &["flaky"], 1, 300).await.is_empty());
    let s = stats(&mut c, "flaky").await;
    assert_eq!((s.ready, s.scheduled, s.in_flight, s.dead), (0, 0, 0, 1));
    let dead = c
        .list_dead(pb::ListDeadRequest {
            queue: "flaky".into(),
            limit: 0,
        })
        .await
        .expect("list dead")
        .into_inner()
        .jobs;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, e.job_id);
    assert_eq!(
        (dead[0].attempts, dead[0].last_error.as_str()),
        (3, "final boom")
    );
    assert_eq!(dead[0].payload, Bytes::from_static(b"p"));

    // Named twice, retried (and counted) once.
    let retried = c
        .retry(pb::RetryDeadRequest {
            queue: "flaky".into(),
            job_ids: vec![e.job_id.clone(), e.job_id.clone()],
            all: false,
        })
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(retried.retried, 1);
    let again = c
        .retry(pb::RetryDeadRequest {
            queue: "flaky".into(),
            job_ids: vec![e.job_id.clone()],
            all: false,
        })
        .await
        .expect_err("no longer dead");
    assert_eq!(again.code(), Code::NotFound);
    let job = fetch(&mut c, &["flaky"], 1, 0).await.remove(0);
    assert_eq!((job.id.as_str(), job.attempt), (e.job_id.as_str(), 1));
    assert_eq!(job.last_error, "final boom");
    ack(&mut c, &job).await.expect("ack");

    // Discard deletes dead jobs for good.
    let e2 = enqueue(
        &mut c,
        "flaky",
        "q",
        pb::JobOptions {
            max_attempts: 1,
            ..options()
        },
    )
    .await;
    let job = fetch(&mut c, &["flaky"], 1, 0).await.remove(0);
    assert!(fail(&mut c, &job, "no").await.dead);
    let d = c
        .discard(pb::DiscardDeadRequest {
            queue: "flaky".into(),
            job_ids: vec![],
            all: true,
        })
        .await
        .expect("discard")
        .into_inner();
    assert_eq!(d.discarded, 1);
    let s = stats(&mut c, "flaky").await;
    assert_eq!(
        (s.ready, s.scheduled, s.in_flight, s.dead),
        (0, 0, 0, 0),
        "{}",
        e2.job_id
    );
    let left = b.leftovers().await;
    assert!(left.is_empty(), "{left:?}");
}

async fn an_expired_lease_goes_to_another_worker_and_the_old_token_is_refused(b: Backend) {
    let mut c = Client::new(b.server.channel.clone());
    let e = enqueue(
        &mut c,
        "slow",
        "p",
        pb::JobOptions {
            timeout: ms(200),
            ..options()
        },
    )
    .await;
    let first = fetch(&mut c, &["slow"], 1, 0).await.remove(0);
    // The waiting fetch wakes when the lease runs out and takes the job back.
    let second = fetch(&mut c, &["slow"], 1, 5_000).await.remove(0);
    assert_eq!(second.id, e.job_id);
    assert_eq!(second.attempt, 2);
    assert!(
        second.last_error.contains("lease expired"),
        "{}",
        second.last_error
    );
    assert_ne!(first.lease_token, second.lease_token);
    for refused in [
        ack(&mut c, &first).await.expect_err("old token"),
        c.extend(pb::ExtendJobRequest {
            queue: "slow".into(),
            job_id: first.id.clone(),
            lease_token: first.lease_token.clone(),
            timeout: None,
        })
        .await
        .expect_err("old token"),
    ] {
        assert_eq!(refused.code(), Code::FailedPrecondition);
    }
    ack(&mut c, &second).await.expect("the new lease");
}

async fn extend_keeps_a_lease_and_give_back_does_not_count_an_attempt(b: Backend) {
    let mut c = Client::new(b.server.channel.clone());
    enqueue(
        &mut c,
        "long",
        "p",
        pb::JobOptions {
            timeout: ms(300),
            ..options()
        },
    )
    .await;
    let job = fetch(&mut c, &["long"], 1, 0).await.remove(0);
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = c
            .extend(pb::ExtendJobRequest {
                queue: "long".into(),
                job_id: job.id.clone(),
                lease_token: job.lease_token.clone(),
                timeout: None,
            })
            .await
            .expect("extend")
            .into_inner();
        assert!(ts_ms(r.lease_expires_at) > ts_ms(job.lease_expires_at));
        assert!(
            fetch(&mut c, &["long"], 1, 0).await.is_empty(),
            "still leased"
        );
    }
    c.give_back(pb::GiveBackRequest {
        queue: "long".into(),
        job_id: job.id.clone(),
        lease_token: job.lease_token.clone(),
    })
    .await
    .expect("give back");
    let again = fetch(&mut c, &["long"], 1, 0).await.remove(0);
    assert_eq!((again.id.as_str(), again.attempt), (job.id.as_str(), 1));
    ack(&mut c, &again).await.expect("ack");
}

async fn a_lease_that_runs_out_on_the_last_attempt_makes_the_job_dead(b: Backend) {
    let mut c = Client::new(b.server.channel.clone());
    let e = enqueue(
        &mut c,
        "once",
        "p",
        pb::JobOptions {
            timeout: ms(100),
            max_attempts: 1,
            ..options()
        },
    )
    .await;
    let job = fetch(&mut c, &["once"], 1, 0).await.remove(0);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(fetch(&mut c, &["once"], 1, 0).await.is_empty());
    let dead = c
        .list_dead(pb::ListDeadRequest {
            queue: "once".into(),
            limit: 10,
        })
        .await
        .expect("dead")
        .into_inner()
        .jobs;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, e.job_id);
    assert!(dead[0].last_error.contains("lease expired"));
    assert_eq!(
        ack(&mut c, &job).await.expect_err("dead").code(),
        Code::FailedPrecondition
    );
}

async fn a_unique_key_under_concurrent_enqueues_gives_one_job(b: Backend) {
    let c = Client::new(b.server.channel.clone());
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let mut c = c.clone();
            tokio::spawn(async move {
                enqueue(
                    &mut c,
                    "uniq",
                    &format!("from {i}"),
                    pb::JobOptions {
                        unique_key: "campaign:42".into(),
                        ..options()
                    },
                )
                .await
            })
        })
        .collect();
    let mut ids = HashSet::new();
    let mut fresh = 0;
    for t in tasks {
        let r = t.await.expect("task");
        ids.insert(r.job_id);
        if !r.duplicate {
            fresh += 1;
        }
    }
    assert_eq!((ids.len(), fresh), (1, 1));
    let mut c = c;
    let s = stats(&mut c, "uniq").await;
    assert_eq!(s.ready, 1);
    // Still unique while it runs; free again once it is done.
    let job = fetch(&mut c, &["uniq"], 1, 0).await.remove(0);
    let unique = pb::JobOptions {
        unique_key: "campaign:42".into(),
        ..options()
    };
    assert!(enqueue(&mut c, "uniq", "x", unique.clone()).await.duplicate);
    ack(&mut c, &job).await.expect("ack");
    let after = enqueue(&mut c, "uniq", "x", unique.clone()).await;
    assert!(!after.duplicate);
    assert_ne!(after.job_id, job.id);
    // One batch with the key twice adds it once.
    let batch = c
        .enqueue_many(pb::EnqueueManyRequest {
            queue: "uniq2".into(),
            jobs: vec![
                pb::NewJob {
                    payload: Bytes::from_static(b"a"),
                    options: Some(unique.clone()),
                },
                pb::NewJob {
                    payload: Bytes::from_static(b"b"),
                    options: Some(unique),
                },
            ],
        })
        .await
        .expect("batch")
        .into_inner()
        .jobs;
    assert!(!batch[0].duplicate && batch[1].duplicate);
    assert_eq!(batch[0].job_id, batch[1].job_id);
}

async fn a_paused_queue_hands_out_nothing_until_resumed(b: Backend) {
    let mut c = Client::new(b.server.channel.clone());
    c.pause(pb::PauseQueueRequest { queue: "p".into() })
        .await
        .expect("pause");
    let e = enqueue(&mut c, "p", "x", options()).await;
    assert!(fetch(&mut c, &["p"], 1, 0).await.is_empty());
    let s = stats(&mut c, "p").await;
    assert!(s.paused && s.ready == 1);
    let mut waiter = c.clone();
    let got = tokio::spawn(async move { fetch(&mut waiter, &["p"], 1, 10_000).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.resume(pb::ResumeQueueRequest { queue: "p".into() })
        .await
        .expect("resume");
    let jobs = got.await.expect("fetch");
    assert_eq!(jobs[0].id, e.job_id, "woken by the resume");
    assert!(!stats(&mut c, "p").await.paused);
}

async fn a_full_queue_refuses_a_batch_whole(b: Backend) {
    let mut c = Client::new(b.server.channel.clone());
    let job = |p: &str| pb::NewJob {
        payload: Bytes::from(p.to_owned()),
        options: None,
    };
    let refused = c
        .enqueue_many(pb::EnqueueManyRequest {
            queue: "full".into(),
            jobs: (0..6).map(|i| job(&i.to_string())).collect(),
        })
        .await
        .expect_err("over max_jobs");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert_eq!(stats(&mut c, "full").await.ready, 0, "nothing added");
    let ok = c
        .enqueue_many(pb::EnqueueManyRequest {
            queue: "full".into(),
            jobs: (0..5).map(|i| job(&i.to_string())).collect(),
        })
        .await
        .expect("fits")
        .into_inner()
        .jobs;
    assert_eq!(ok.len(), 5);
    let one_more = c
        .enqueue(pb::EnqueueRequest {
            queue: "full".into(),
            payload: Bytes::new(),
            options: None,
        })
        .await
        .expect_err("full");
    assert_eq!(one_more.code(), Code::ResourceExhausted);
    // Order kept within the batch.
    let jobs = fetch(&mut c, &["full"], 5, 0).await;
    let payloads: Vec<&[u8]> = jobs.iter().map(|j| j.payload.as_ref()).collect();
    assert_eq!(payloads, [b"0", b"1", b"2", b"3", b"4"]);
}

async fn concurrent_workers_never_share_a_job(b: Backend) {
    let mut c = Client::new(b.server.channel.clone());
    let total = 300usize;
    for chunk in 0..3 {
        c.enqueue_many(pb::EnqueueManyRequest {
            queue: "race".into(),
            jobs: (0..100)
                .map(|i| pb::NewJob {
                    payload: Bytes::from(format!("{}", chunk * 100 + i)),
                    options: None,
                })
                .collect(),
        })
        .await
        .expect("batch");
    }
    let seen: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (mut c, seen) = (c.clone(), seen.clone());
            tokio::spawn(async move {
                loop {
                    let jobs = fetch(&mut c, &["race"], 3, 200).await;
                    if jobs.is_empty() {
                        return;
                    }
                    for job in jobs {
                        *seen
                            .lock()
                            .expect("seen")
                            .entry(job.id.clone())
                            .or_default() += 1;
                        ack(&mut c, &job).await.expect("ack");
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("worker");
    }
    let seen = seen.lock().expect("seen").clone();
    assert_eq!(seen.len(), total);
    assert!(seen.values().all(|n| *n == 1), "a job was leased twice");
    let s = stats(&mut c, "race").await;
    assert_eq!((s.ready, s.in_flight), (0, 0));
}

async fn bad_input_is_rejected(b: Backend) {
    let mut c = Client::new(b.server.channel.clone());
    let bad_enqueues = [
        pb::EnqueueRequest {
            queue: String::new(),
            ..Default::default()
        },
        pb::EnqueueRequest {
            queue: "q\n".into(),
            ..Default::default()
        },
        pb::EnqueueRequest {
            queue: "x".repeat(200),
            ..Default::default()
        },
        pb::EnqueueRequest {
            queue: "q".into(),
            payload: Bytes::from(vec![0u8; 300 * 1024]),
            options: None,
        },
        pb::EnqueueRequest {
            queue: "q".into(),
            payload: Bytes::new(),
            options: Some(pb::JobOptions {
                delay: ms(1000),
                run_at: Some(prost_types::Timestamp::default()),
                ..options()
            }),
        },
        pb::EnqueueRequest {
            queue: "q".into(),
            payload: Bytes::new(),
            options: Some(pb::JobOptions {
                timeout: ms(1),
                ..options()
            }),
        },
        pb::EnqueueRequest {
            queue: "q".into(),
            payload: Bytes::new(),
            options: Some(pb::JobOptions {
                priority: 9,
                ..options()
            }),
        },
        pb::EnqueueRequest {
            queue: "q".into(),
            payload: Bytes::new(),
            options: Some(pb::JobOptions {
                delay: Some(prost_types::Duration {
                    seconds: -1,
                    nanos: 0,
                }),
                ..options()
            }),
        },
    ];
    for req in bad_enqueues {
        let e = c.enqueue(req).await.expect_err("invalid");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    }
    for req in [
        pb::FetchRequest::default(),
        pb::FetchRequest {
            queues: vec!["q".into()],
            max: 5000,
            wait: None,
        },
    ] {
        let e = c.fetch(req).await.expect_err("invalid");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    }
    let e = c
        .ack(pb::AckRequest {
            queue: "q".into(),
            job_id: "not-an-id".into(),
            lease_token: "t".into(),
        })
        .await
        .expect_err("invalid");
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .retry(pb::RetryDeadRequest {
            queue: "q".into(),
            job_ids: vec![],
            all: false,
        })
        .await
        .expect_err("neither ids nor all");
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .enqueue_many(pb::EnqueueManyRequest {
            queue: "q".into(),
            jobs: vec![],
        })
        .await
        .expect_err("empty batch");
    assert_eq!(e.code(), Code::InvalidArgument);
}

async fn a_queue_left_with_only_dead_jobs_expires_with_them(b: Backend) {
    let mut c = Client::new(b.server.channel.clone());
    let once = pb::JobOptions {
        max_attempts: 1,
        ..options()
    };
    enqueue(&mut c, "abandoned", "dies", once.clone()).await;
    enqueue(&mut c, "abandoned", "lives", options()).await;
    let jobs = fetch(&mut c, &["abandoned"], 2, 0).await;
    assert_eq!(jobs.len(), 2);
    assert!(fail(&mut c, &jobs[0], "boom").await.dead);
    // A live job keeps the queue (and its dead job) whatever the time.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    ack(&mut c, &jobs[1]).await.expect("ack");
    // That was the last live job; the dead one is past its second, so the next look prunes it.
    enqueue(&mut c, "abandoned", "dies too", once).await;
    let job = fetch(&mut c, &["abandoned"], 1, 0).await.remove(0);
    assert!(fail(&mut c, &job, "boom").await.dead);
    assert_eq!(
        stats(&mut c, "abandoned").await.dead,
        1,
        "the older dead job is pruned"
    );
    // Nobody calls the queue again: it expires with its newest dead job, keys and all.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let s = stats(&mut c, "abandoned").await;
    assert_eq!((s.ready, s.scheduled, s.in_flight, s.dead), (0, 0, 0, 0));
    let left = b.leftovers().await;
    assert!(left.is_empty(), "{left:?}");
    // A new job after that starts a queue afresh.
    let e = enqueue(&mut c, "abandoned", "new", options()).await;
    assert_eq!(fetch(&mut c, &["abandoned"], 1, 0).await[0].id, e.job_id);
}
