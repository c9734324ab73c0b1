//! The SessionService contract, run against both stores through real gRPC calls.
//! Every test here runs twice: `memory_store::<name>` and `redis_store::<name>` (a private
//! redis-server per test).

use std::{
    collections::HashMap,
    num::{NonZeroU32, NonZeroUsize},
    time::Duration,
};

use crate::common::{Backend, eventually};
use bytes::Bytes;
use flowstate::{config::Config, proto::v1 as pb};
use pb::session_service_client::SessionServiceClient;
use tonic::{Code, Request, transport::Channel};
use tonic_types::StatusExt;

type Client = SessionServiceClient<Channel>;

contract_tests! {
    create_and_get_round_trip,
    touch_slides_idle_expiry,
    idle_expiry_makes_sessions_not_found,
    absolute_lifetime_caps_touches,
    update_sets_removes_and_versions,
    concurrent_compare_and_set_has_exactly_one_winner,
    concurrent_unconditional_updates_lose_nothing,
    update_over_the_data_limit_changes_nothing with super::small_limits,
    rotation_kills_the_old_id_and_keeps_state,
    delete_by_id_and_by_handle,
    list_and_delete_user_sessions,
    oldest_sessions_are_evicted_over_the_per_user_limit with super::three_per_user,
    bad_input_is_rejected_and_stores_nothing with super::small_limits,
    a_new_session_is_never_the_one_evicted with super::one_per_user,
}

fn one_per_user(c: &mut Config) {
    c.session.max_per_user = NonZeroU32::new(1).expect("non-zero");
}

fn small_limits(c: &mut Config) {
    c.session.max_fields = NonZeroUsize::new(4).expect("non-zero");
    c.session.max_data_bytes = NonZeroUsize::new(64).expect("non-zero");
    c.session.max_user_id_bytes = NonZeroUsize::new(16).expect("non-zero");
}

fn three_per_user(c: &mut Config) {
    c.session.max_per_user = NonZeroU32::new(3).expect("non-zero");
}

fn bytes(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn ms(ts: &Option<prost_types::Timestamp>) -> i64 {
    let ts = ts.as_ref().expect("timestamp set");
    ts.seconds * 1000 + i64::from(ts.nanos) / 1_000_000
}

fn dur(millis: u64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration::try_from(Duration::from_millis(millis)).expect("duration"))
}

async fn create(client: &mut Client, user: &str, data: &[(&str, &str)]) -> pb::Session {
    client
        .create_session(pb::CreateSessionRequest {
            user_id: user.into(),
            data: data.iter().map(|(k, v)| ((*k).into(), bytes(v))).collect(),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner()
}

async fn create_with(client: &mut Client, user: &str, idle: u64, absolute: u64) -> pb::Session {
    client
        .create_session(pb::CreateSessionRequest {
            user_id: user.into(),
            idle_timeout: dur(idle),
            absolute_timeout: dur(absolute),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner()
}

async fn get(client: &mut Client, id: &str, touch: bool) -> Result<pb::Session, tonic::Status> {
    client
        .get_session(pb::GetSessionRequest {
            id: id.into(),
            touch,
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn update(
    client: &mut Client,
    id: &str,
    set: &[(&str, &str)],
    remove: &[&str],
    expected_version: u64,
) -> Result<pb::Session, tonic::Status> {
    client
        .update_session(pb::UpdateSessionRequest {
            id: id.into(),
            set: set.iter().map(|(k, v)| ((*k).into(), bytes(v))).collect(),
            remove: remove.iter().map(|s| (*s).to_owned()).collect(),
            expected_version,
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn list(client: &mut Client, user: &str) -> Vec<pb::Session> {
    client
        .list_user_sessions(pb::ListUserSessionsRequest {
            user_id: user.into(),
        })
        .await
        .expect("list")
        .into_inner()
        .sessions
}

fn assert_invalid(result: Result<impl std::fmt::Debug, tonic::Status>, field: &str) {
    let status = result.expect_err("must be rejected");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let details = status
        .get_details_bad_request()
        .unwrap_or_else(|| panic!("no BadRequest details in {status:?}"));
    assert!(
        details
            .field_violations
            .iter()
            .any(|v| v.field.starts_with(field)),
        "no violation for {field} in {:?}",
        details.field_violations
    );
}

async fn create_and_get_round_trip(b: Backend) {
    let mut c = b.server.sessions();
    let created = c
        .create_session(pb::CreateSessionRequest {
            user_id: "alice".into(),
            data: HashMap::from([
                ("cart".into(), bytes("3 items")),
                ("bin".into(), Bytes::from_static(&[0, 255, 7])),
            ]),
            metadata: HashMap::from([("user_agent".into(), "curl/8".into())]),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner();
    assert_eq!(
        created.id.len(),
        54,
        "256-bit secret + 64-bit tag, base64url"
    );
    assert!(
        created
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
    assert_eq!(created.version, 1);
    let day = 24 * 3600 * 1000;
    assert_eq!(
        ms(&created.expires_at) - ms(&created.created_at),
        day,
        "default idle timeout"
    );

    let got = get(&mut c, &created.id, false).await.expect("get");
    assert!(
        got.id.is_empty(),
        "the id is only returned by create and rotate"
    );
    assert_eq!(got.handle, created.handle);
    assert_eq!(got.user_id, "alice");
    assert_eq!(got.data, created.data);
    assert_eq!(got.data["bin"].as_ref(), &[0, 255, 7]);
    assert_eq!(got.metadata["user_agent"], "curl/8");
    assert_eq!(
        got.expires_at, created.expires_at,
        "a read without touch changes nothing"
    );

    let other = create(&mut c, "alice", &[]).await;
    assert_ne!(other.id, created.id);
    assert_ne!(other.handle, created.handle);
}

async fn touch_slides_idle_expiry(b: Backend) {
    let mut c = b.server.sessions();
    let s = create_with(&mut c, "u", 60_000, 3_600_000).await;
    let created = ms(&s.expires_at);
    // Wait until the clock has moved, then touch: the expiry must move with it.
    let moved = eventually(Duration::from_secs(5), || {
        let mut c = c.clone();
        let id = s.id.clone();
        async move {
            let t = get(&mut c, &id, true).await.expect("get with touch");
            ms(&t.expires_at) > created
        }
    })
    .await;
    assert!(moved, "touch never slid the expiry");
    let touched = c
        .touch_session(pb::TouchSessionRequest { id: s.id.clone() })
        .await
        .expect("touch")
        .into_inner();
    assert_eq!(ms(&touched.expires_at) - ms(&touched.last_seen_at), 60_000);
    assert!(ms(&touched.last_seen_at) > ms(&s.created_at));
    assert_eq!(touched.version, 1, "touching is not a data change");
}

async fn idle_expiry_makes_sessions_not_found(b: Backend) {
    let mut c = b.server.sessions();
    let s = create_with(&mut c, "u", 300, 60_000).await;
    let gone = eventually(Duration::from_secs(5), || {
        let mut c = c.clone();
        let id = s.id.clone();
        async move { matches!(get(&mut c, &id, false).await, Err(e) if e.code() == Code::NotFound) }
    })
    .await;
    assert!(gone, "session outlived its idle timeout");
    assert!(
        common_now() >= ms(&s.expires_at),
        "expired before its expiry time"
    );
    let code = update(&mut c, &s.id, &[("a", "b")], &[], 0)
        .await
        .expect_err("update");
    assert_eq!(code.code(), Code::NotFound);
    assert!(
        list(&mut c, "u").await.is_empty(),
        "expired sessions are not listed"
    );
}

fn common_now() -> i64 {
    flowstate::time::now_ms()
}

async fn absolute_lifetime_caps_touches(b: Backend) {
    let mut c = b.server.sessions();
    let s = create_with(&mut c, "u", 3_600_000, 400).await;
    let absolute = ms(&s.created_at) + 400;
    assert_eq!(ms(&s.expires_at), absolute);
    // Touch as fast as we can: the session must still die at its absolute expiry.
    let gone = eventually(Duration::from_secs(5), || {
        let mut c = c.clone();
        let id = s.id.clone();
        async move {
            match get(&mut c, &id, true).await {
                Ok(t) => {
                    assert!(
                        ms(&t.expires_at) <= absolute,
                        "touched past the absolute lifetime"
                    );
                    false
                }
                Err(e) => e.code() == Code::NotFound,
            }
        }
    })
    .await;
    assert!(gone);
}

async fn update_sets_removes_and_versions(b: Backend) {
    let mut c = b.server.sessions();
    let s = create(&mut c, "u", &[("a", "1"), ("b", "2")]).await;
    let u = update(&mut c, &s.id, &[("c", "3"), ("a", "10")], &["b"], 1)
        .await
        .expect("update");
    assert_eq!(u.version, 2);
    let want: HashMap<String, Bytes> =
        HashMap::from([("a".into(), bytes("10")), ("c".into(), bytes("3"))]);
    assert_eq!(u.data, want);
    assert_eq!(get(&mut c, &s.id, false).await.expect("get").data, want);

    let conflict = update(&mut c, &s.id, &[("d", "4")], &[], 1)
        .await
        .expect_err("stale version");
    assert_eq!(conflict.code(), Code::Aborted);
    assert_eq!(
        get(&mut c, &s.id, false).await.expect("get").version,
        2,
        "conflict changed nothing"
    );

    let u = update(&mut c, &s.id, &[], &["missing", "a"], 0)
        .await
        .expect("unconditional");
    assert_eq!(u.version, 3);
    assert_eq!(u.data, HashMap::from([("c".into(), bytes("3"))]));
}

async fn concurrent_compare_and_set_has_exactly_one_winner(b: Backend) {
    let c = b.server.sessions();
    let s = create(&mut c.clone(), "u", &[("counter", "0")]).await;
    let mut tasks = Vec::new();
    for i in 0..32 {
        let mut c = c.clone();
        let id = s.id.clone();
        tasks.push(tokio::spawn(async move {
            update(&mut c, &id, &[("winner", &i.to_string())], &[], 1).await
        }));
    }
    let mut winners = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.expect("task") {
            Ok(s) => winners.push((i, s)),
            Err(e) => assert_eq!(e.code(), Code::Aborted, "loser {i}: {e:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one compare-and-set may win");
    let (i, won) = &winners[0];
    assert_eq!(won.version, 2);
    let now = get(&mut c.clone(), &s.id, false).await.expect("get");
    assert_eq!(now.version, 2);
    assert_eq!(
        now.data["winner"],
        bytes(&i.to_string()),
        "the stored value is the winner's"
    );
}

async fn concurrent_unconditional_updates_lose_nothing(b: Backend) {
    let c = b.server.sessions();
    let s = create(&mut c.clone(), "u", &[]).await;
    let mut tasks = Vec::new();
    for i in 0..32 {
        let mut c = c.clone();
        let id = s.id.clone();
        tasks.push(tokio::spawn(async move {
            update(&mut c, &id, &[(&format!("f{i}"), "x")], &[], 0).await
        }));
    }
    for t in tasks {
        t.await.expect("task").expect("update");
    }
    let now = get(&mut c.clone(), &s.id, false).await.expect("get");
    assert_eq!(
        now.data.len(),
        32,
        "field-level writes never overwrite each other"
    );
    assert_eq!(now.version, 33);
}

async fn update_over_the_data_limit_changes_nothing(b: Backend) {
    let mut c = b.server.sessions();
    let s = create(&mut c, "u", &[("a", "1"), ("b", "2"), ("c", "3")]).await;
    // Each update alone is small; together with what is stored they break the limits.
    let r = update(&mut c, &s.id, &[("d", "4"), ("e", "5")], &[], 0).await;
    assert_invalid(r, "set");
    let r = update(&mut c, &s.id, &[("d", &"x".repeat(60))], &[], 0).await;
    assert_invalid(r, "set");
    let now = get(&mut c, &s.id, false).await.expect("get");
    assert_eq!(
        (now.version, now.data.len()),
        (1, 3),
        "refused updates change nothing"
    );
    // Replacing a field counts its new size, not both.
    update(&mut c, &s.id, &[("a", &"y".repeat(40))], &[], 0)
        .await
        .expect("replacement within the limit");
}

async fn rotation_kills_the_old_id_and_keeps_state(b: Backend) {
    let mut c = b.server.sessions();
    let s = create(&mut c, "u", &[("k", "v")]).await;
    let s = update(&mut c, &s.id, &[("k2", "v2")], &[], 0)
        .await
        .map(|u| pb::Session {
            id: s.id.clone(),
            ..u
        })
        .expect("update");
    let rotated = c
        .rotate_session(pb::RotateSessionRequest { id: s.id.clone() })
        .await
        .expect("rotate")
        .into_inner();
    assert_eq!(rotated.id.len(), 54);
    assert_ne!(rotated.id, s.id);
    assert_ne!(rotated.handle, s.handle);
    assert_eq!(
        get(&mut c, &s.id, false).await.expect_err("old id").code(),
        Code::NotFound,
        "the old id is dead at once"
    );
    let got = get(&mut c, &rotated.id, false).await.expect("new id works");
    assert_eq!(got.data, s.data);
    assert_eq!(got.version, s.version);
    assert_eq!(got.created_at, s.created_at);
    assert_eq!(got.expires_at, s.expires_at);
    let listed = list(&mut c, "u").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].handle, rotated.handle);
    let again = c
        .rotate_session(pb::RotateSessionRequest { id: s.id.clone() })
        .await
        .expect_err("rotating a dead id");
    assert_eq!(again.code(), Code::NotFound);
}

async fn delete_by_id_and_by_handle(b: Backend) {
    use pb::delete_session_request::Target;
    let mut c = b.server.sessions();
    let a = create(&mut c, "u", &[]).await;
    let h = create(&mut c, "u", &[]).await;
    let delete = |target| {
        let mut c = c.clone();
        async move {
            c.delete_session(pb::DeleteSessionRequest {
                target: Some(target),
            })
            .await
            .expect("delete")
            .into_inner()
            .deleted
        }
    };
    assert!(delete(Target::Id(a.id.clone())).await);
    assert!(!delete(Target::Id(a.id.clone())).await, "already gone");
    assert!(delete(Target::Handle(h.handle.clone())).await);
    assert!(!delete(Target::Handle(h.handle.clone())).await);
    for s in [&a, &h] {
        assert_eq!(
            get(&mut c, &s.id, false).await.expect_err("deleted").code(),
            Code::NotFound
        );
    }
    assert!(list(&mut c, "u").await.is_empty());
}

async fn list_and_delete_user_sessions(b: Backend) {
    let mut c = b.server.sessions();
    let mut alice = Vec::new();
    for _ in 0..4 {
        alice.push(create(&mut c, "alice", &[]).await);
    }
    let bob = create(&mut c, "bob", &[]).await;

    let listed = list(&mut c, "alice").await;
    assert_eq!(listed.len(), 4);
    assert!(
        listed.iter().all(|s| s.id.is_empty()),
        "lists never reveal ids"
    );
    let mut handles: Vec<_> = listed.iter().map(|s| s.handle.clone()).collect();
    let mut want: Vec<_> = alice.iter().map(|s| s.handle.clone()).collect();
    handles.sort();
    want.sort();
    assert_eq!(handles, want);
    assert!(
        listed
            .windows(2)
            .all(|w| ms(&w[0].created_at) <= ms(&w[1].created_at)),
        "oldest first"
    );

    let keep = alice[2].handle.clone();
    let deleted = c
        .delete_user_sessions(pb::DeleteUserSessionsRequest {
            user_id: "alice".into(),
            keep_handle: Some(keep.clone()),
        })
        .await
        .expect("delete others")
        .into_inner()
        .deleted;
    assert_eq!(deleted, 3);
    let left = list(&mut c, "alice").await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].handle, keep);
    assert!(get(&mut c, &alice[2].id, false).await.is_ok());
    assert!(get(&mut c, &alice[0].id, false).await.is_err());
    assert!(
        get(&mut c, &bob.id, false).await.is_ok(),
        "other users untouched"
    );

    let deleted = c
        .delete_user_sessions(pb::DeleteUserSessionsRequest {
            user_id: "alice".into(),
            keep_handle: None,
        })
        .await
        .expect("delete all")
        .into_inner()
        .deleted;
    assert_eq!(deleted, 1);
    assert!(list(&mut c, "alice").await.is_empty());
    assert_eq!(list(&mut c, "bob").await.len(), 1);
}

async fn oldest_sessions_are_evicted_over_the_per_user_limit(b: Backend) {
    let mut c = b.server.sessions();
    let mut made = Vec::new();
    for _ in 0..5 {
        made.push(create(&mut c, "u", &[]).await);
    }
    let listed = list(&mut c, "u").await;
    assert_eq!(listed.len(), 3, "max_per_user = 3");
    let listed: Vec<_> = listed.into_iter().map(|s| s.handle).collect();
    // Sessions created in the same millisecond tie on age; the survivors must still be 3 of
    // the 5 and must include the newest.
    assert!(listed.contains(&made[4].handle), "the newest survives");
    let mut found = 0;
    for s in &made {
        if get(&mut c, &s.id, false).await.is_ok() {
            assert!(listed.contains(&s.handle));
            found += 1;
        }
    }
    assert_eq!(found, 3, "evicted sessions are gone, not just unlisted");
}

async fn bad_input_is_rejected_and_stores_nothing(b: Backend) {
    let mut c = b.server.sessions();
    let req = |user: &str, data: &[(&str, &str)]| pb::CreateSessionRequest {
        user_id: user.into(),
        data: data.iter().map(|(k, v)| ((*k).into(), bytes(v))).collect(),
        ..Default::default()
    };
    assert_invalid(c.create_session(req("", &[])).await, "user_id");
    assert_invalid(c.create_session(req(&"u".repeat(17), &[])).await, "user_id");
    assert_invalid(
        c.create_session(req("u", &[("big", &"x".repeat(100))]))
            .await,
        "data",
    );
    assert_invalid(
        c.create_session(req(
            "u",
            &[("1", ""), ("2", ""), ("3", ""), ("4", ""), ("5", "")],
        ))
        .await,
        "data",
    );
    assert_invalid(c.create_session(req("u", &[("", "x")])).await, "data");
    let mut negative = req("u", &[]);
    negative.idle_timeout = Some(prost_types::Duration {
        seconds: -5,
        nanos: 0,
    });
    assert_invalid(c.create_session(negative).await, "idle_timeout");
    let mut too_long = req("u", &[]);
    too_long.absolute_timeout = Some(prost_types::Duration {
        seconds: 10 * 365 * 24 * 3600,
        nanos: 0,
    });
    assert_invalid(c.create_session(too_long).await, "absolute_timeout");
    assert!(
        list(&mut c, "u").await.is_empty(),
        "rejected creates stored nothing"
    );
    assert!(
        b.leftovers().await.is_empty(),
        "no keys written: {:?}",
        b.leftovers().await
    );

    for bad_id in [
        "",
        "short",
        &"A".repeat(54).replace('A', "!"),
        &"A".repeat(55),
    ] {
        assert_invalid(get(&mut c, bad_id, false).await, "id");
        assert_invalid(update(&mut c, bad_id, &[("a", "b")], &[], 0).await, "id");
        assert_invalid(
            c.rotate_session(pb::RotateSessionRequest { id: bad_id.into() })
                .await,
            "id",
        );
        assert_invalid(
            c.touch_session(pb::TouchSessionRequest { id: bad_id.into() })
                .await,
            "id",
        );
    }
    assert_invalid(
        c.delete_session(pb::DeleteSessionRequest { target: None })
            .await,
        "id",
    );
    assert_invalid(
        c.delete_session(pb::DeleteSessionRequest {
            target: Some(pb::delete_session_request::Target::Handle("nope".into())),
        })
        .await,
        "handle",
    );
    assert_invalid(
        c.delete_user_sessions(pb::DeleteUserSessionsRequest {
            user_id: "u".into(),
            keep_handle: Some("nope".into()),
        })
        .await,
        "keep_handle",
    );
    assert_invalid(
        c.list_user_sessions(pb::ListUserSessionsRequest {
            user_id: String::new(),
        })
        .await,
        "user_id",
    );

    let s = create(&mut c, "u", &[("a", "1")]).await;
    assert_invalid(update(&mut c, &s.id, &[], &[], 0).await, "set");
    assert_invalid(
        update(&mut c, &s.id, &[("a", "2")], &["a"], 0).await,
        "remove",
    );
    assert_invalid(
        update(&mut c, &s.id, &[("x", &"y".repeat(100))], &[], 0).await,
        "set",
    );
    let now = get(&mut c, &s.id, false).await.expect("get");
    assert_eq!(
        (now.version, now.data["a"].clone()),
        (1, bytes("1")),
        "nothing changed"
    );

    // Oversized messages are refused before any handler runs, as RESOURCE_EXHAUSTED (the gRPC
    // status code spec's code for a message larger than the server accepts).
    let huge = c
        .create_session(Request::new(req(
            "u",
            &[("x", &"z".repeat(5 * 1024 * 1024))],
        )))
        .await
        .expect_err("over max_message_bytes");
    assert_eq!(huge.code(), Code::ResourceExhausted, "{huge:?}");
    assert!(
        list(&mut c, "u").await.len() == 1,
        "only the valid session exists"
    );
}

/// Redis only: the in-memory store has no key space a dump could leak.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_keys_hide_session_ids_and_all_expire() {
    let b = Backend::redis(|_| {}).await;
    let mut c = b.server.sessions();
    let s = create(&mut c, "alice", &[("k", "v")]).await;
    let rotated = c
        .rotate_session(pb::RotateSessionRequest { id: s.id.clone() })
        .await
        .expect("rotate")
        .into_inner();
    let keys = b.redis_keys().await;
    let url = b.redis_url.as_ref().expect("a Redis backend");
    // A session hash, a user index, and the `flowstate.sessions` topic the rotation was
    // announced on (which must not hold the ids either).
    assert_eq!(
        keys.len(),
        3,
        "one session hash, one user index, one topic: {keys:?}"
    );
    assert!(keys.iter().any(|k| k.contains(":ev:{flowstate.sessions}")));
    let mut conn = redis::Client::open(url.as_str())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    for key in &keys {
        assert!(
            key.starts_with(&format!("{}:default:", b.prefix)),
            "prefix and tenant: {key}"
        );
        for id in [&s.id, &rotated.id] {
            // The first 11 characters are the non-secret user tag; the rest is the secret.
            assert!(!key.contains(&id[11..]), "raw session secret in key {key}");
            assert!(!key.contains(id.as_str()));
        }
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .expect("PTTL");
        assert!(ttl > 0, "key {key} has no TTL ({ttl})");
        let dump: Vec<Vec<u8>> = if key.contains(":ev:") {
            type Entries = Vec<(String, Vec<(Vec<u8>, Vec<u8>)>)>;
            let entries: Entries = redis::cmd("XRANGE")
                .arg(key)
                .arg("-")
                .arg("+")
                .query_async(&mut conn)
                .await
                .expect("XRANGE");
            entries
                .into_iter()
                .flat_map(|(_, fields)| fields.into_iter().flat_map(|(f, v)| [f, v]))
                .collect()
        } else {
            match redis::cmd("HGETALL").arg(key).query_async(&mut conn).await {
                Ok(v) => v,
                Err(_) => redis::cmd("ZRANGE")
                    .arg(key)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut conn)
                    .await
                    .expect("ZRANGE"),
            }
        };
        for item in dump {
            let item = String::from_utf8_lossy(&item);
            for id in [&s.id, &rotated.id] {
                assert!(
                    !item.contains(&id[11..]),
                    "secret stored in a value of {key}"
                );
            }
        }
    }
}

/// At `max_per_user` a create evicts the oldest session, never the one it creates, even when
/// several are created within the same millisecond (ties on the creation time).
async fn a_new_session_is_never_the_one_evicted(b: Backend) {
    let mut c = b.server.sessions();
    for i in 0..300 {
        let s = create(&mut c, "tied", &[]).await;
        let got = c
            .get_session(pb::GetSessionRequest {
                id: s.id.clone(),
                touch: false,
            })
            .await;
        assert!(
            got.is_ok(),
            "create {i}: the new session was evicted: {got:?}"
        );
    }
    let left = c
        .list_user_sessions(pb::ListUserSessionsRequest {
            user_id: "tied".into(),
        })
        .await
        .expect("list")
        .into_inner()
        .sessions;
    assert_eq!(left.len(), 1);
}
