//! Redis Cluster: the health check that every slot is served, and routing by hash slot
//! (which slot a command goes to, a pipeline split by slot).

use redis::{
    Arg, Cmd, Pipeline, RedisError, Value, cluster::ClusterClient, cluster_async::ClusterConnection,
};

use super::{RedisBackend, classify::classify, reply};
use crate::store::StoreError;

/// The health task's connection to a cluster.
pub(super) struct ClusterHealth {
    pub(super) client: ClusterClient,
    pub(super) conn: tokio::sync::Mutex<Option<ClusterConnection>>,
}

impl RedisBackend {
    /// Every slot is served: `CLUSTER SLOTS` (from any node) covers all 16384 slots, and every
    /// master it names answers `CLUSTER INFO` with `cluster_state:ok`. A master that is gone is
    /// noticed at once (it does not answer), before the cluster itself marks it failed. Asked
    /// on the health task's own connection, made anew after any failed check.
    pub(super) async fn cluster_state(&self, health: &ClusterHealth) -> Result<(), StoreError> {
        use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo, SingleNodeRoutingInfo};
        let mut slot = health.conn.lock().await;
        let start = std::time::Instant::now();
        let checked = async {
            let conn = match slot.as_mut() {
                Some(conn) => conn,
                None => slot.insert(health.client.get_async_connection().await?),
            };
            let slots = conn
                .route_command(
                    redis::cmd("CLUSTER").arg("SLOTS").clone(),
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                )
                .await?;
            let infos = conn
                .route_command(
                    redis::cmd("CLUSTER").arg("INFO").clone(),
                    RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None)),
                )
                .await?;
            Ok::<_, RedisError>((slot_masters(&slots), cluster_infos(infos)))
        }
        .await;
        metrics::histogram!("flowstate_store_duration_seconds", "op" => "ping")
            .record(start.elapsed().as_secs_f64());
        let verdict = match checked {
            Err(e) => Err(classify(&e, self.command_timeout)),
            Ok((masters, infos)) => match std::num::NonZeroUsize::new(masters) {
                None => Err(StoreError::Unavailable(
                    "the cluster does not serve every slot".into(),
                )),
                Some(masters) if infos.len() < masters.get() => Err(StoreError::Unavailable(
                    format!("{} of {masters} cluster masters answered", infos.len()),
                )),
                Some(_)
                    if infos
                        .iter()
                        .any(|info| !info.lines().any(|l| l.trim() == "cluster_state:ok")) =>
                {
                    Err(StoreError::Unavailable(
                        "a cluster master reports cluster_state other than ok (slots not served)"
                            .into(),
                    ))
                }
                Some(_) => Ok(()),
            },
        };
        if verdict.is_err() {
            // The next check learns the topology afresh.
            *slot = None;
        }
        verdict
    }
}

/// How many masters a `CLUSTER SLOTS` reply names, when its ranges cover every slot; 0 when
/// some slot has no master.
fn slot_masters(reply: &Value) -> usize {
    let Value::Array(ranges) = reply else {
        return 0;
    };
    let mut covered = 0i64;
    let mut masters = std::collections::HashSet::new();
    for range in ranges {
        let Value::Array(parts) = range else {
            return 0;
        };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
            (parts.first(), parts.get(1), parts.get(2))
        else {
            return 0;
        };
        covered += end - start + 1;
        let host = match master.first() {
            Some(Value::BulkString(h)) => h.clone(),
            _ => Vec::new(),
        };
        let port = match master.get(1) {
            Some(Value::Int(p)) => *p,
            _ => 0,
        };
        masters.insert((host, port));
    }
    if covered == 16384 { masters.len() } else { 0 }
}

/// The texts of a fanned-out `CLUSTER INFO` (a map of node to text, or a list of texts).
fn cluster_infos(reply: Value) -> Vec<String> {
    let text = |v: Value| match v {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::VerbatimString { text, .. } => Some(text),
        Value::SimpleString(s) => Some(s),
        _ => None,
    };
    match reply {
        Value::Map(pairs) => pairs.into_iter().filter_map(|(_, v)| text(v)).collect(),
        Value::Array(items) => items.into_iter().filter_map(text).collect(),
        other => text(other).into_iter().collect(),
    }
}

/// The hash slot a command is routed by: its key (for EVALSHA the first of its keys); `None`
/// for the keyless commands flowstate pipelines (`TIME`, `WAIT`), which go with the command
/// before them. A command this does not know is an error, so a new one cannot be sent to the
/// wrong node unnoticed.
pub(super) fn command_slot(cmd: &Cmd) -> Result<Option<u16>, StoreError> {
    let mut args = cmd.args_iter().filter_map(|a| match a {
        Arg::Simple(bytes) => Some(bytes),
        _ => None,
    });
    let name = args.next().unwrap_or_default().to_ascii_uppercase();
    let key = match name.as_slice() {
        b"EVALSHA" | b"EVAL" => {
            let _script = args.next();
            let keys = args
                .next()
                .and_then(reply::parse_int)
                .ok_or_else(|| StoreError::Protocol("EVALSHA without a key count".into()))?;
            if keys == 0 {
                return Err(StoreError::Protocol(
                    "a script without keys cannot be routed on a cluster".into(),
                ));
            }
            args.next()
        }
        b"TIME" | b"WAIT" => return Ok(None),
        b"GET" | b"SET" | b"DEL" | b"HMGET" | b"HGETALL" | b"HSET" | b"ZSCAN" | b"ZRANGE"
        | b"PEXPIRE" | b"PTTL" | b"EXISTS" | b"HGET" | b"PFCOUNT" => args.next(),
        other => {
            return Err(StoreError::Protocol(format!(
                "{} has no known key position for cluster routing",
                String::from_utf8_lossy(other)
            )));
        }
    };
    key.map(|k| Some(crate::store::keys::slot(k)))
        .ok_or_else(|| StoreError::Protocol("a command without its key".into()))
}

/// `pipe` split by hash slot, in order of first appearance: each group's slot, commands (in
/// their order) and their positions in `pipe`.
pub(super) fn by_slot(pipe: &Pipeline) -> Result<Vec<(u16, Pipeline, Vec<usize>)>, StoreError> {
    let slots = pipe
        .cmd_iter()
        .map(command_slot)
        .collect::<Result<Vec<_>, _>>()?;
    // A keyless command takes the slot before it, or, at the start, the first one after it.
    let first = slots.iter().flatten().next().copied().unwrap_or(0);
    let mut groups: Vec<(u16, Pipeline, Vec<usize>)> = Vec::new();
    let mut last = first;
    for (i, (cmd, slot)) in pipe.cmd_iter().zip(slots).enumerate() {
        let slot = slot.unwrap_or(last);
        last = slot;
        let at = match groups.iter().position(|(s, ..)| *s == slot) {
            Some(at) => at,
            None => {
                groups.push((slot, redis::pipe(), Vec::new()));
                groups.len() - 1
            }
        };
        groups[at].1.add_command(cmd.clone());
        groups[at].2.push(i);
    }
    Ok(groups)
}
