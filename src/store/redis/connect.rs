//! How connections are made in each mode: one server (TLS or not), the master the sentinels
//! name, or a cluster's seed nodes; and the Pub/Sub opener of the signal connection.

use std::time::Duration;

use redis::{
    AsyncConnectionConfig, Client, ConnectionInfo, IntoConnectionInfo, RedisError,
    cluster::ClusterClientBuilder,
    sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType},
};

use super::{notify::Opener, pool::Connector};
use crate::{
    config::{RedisConfig, RedisMode, redact_url},
    store::StoreError,
};

/// The connector of `config`'s mode, and how to name it in logs (passwords hidden).
pub(super) fn connector(
    config: &RedisConfig,
    response_timeout: Option<Duration>,
) -> Result<(Connector, String), StoreError> {
    let bad = |key: &str, e: RedisError| StoreError::Protocol(format!("{key}: {e}"));
    let nodelay = redis::io::tcp::TcpSettings::default().set_nodelay(true);
    let connection_config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(config.connect_timeout.get()))
        .set_response_timeout(response_timeout);
    match config.mode {
        RedisMode::Standalone => {
            let (info, url) = standalone_info(config)?;
            let manager = deadpool_redis::Manager::new_with_config(info, connection_config)
                .map_err(|e| bad("redis.url", e))?;
            Ok((Connector::Standalone(manager), redact_url(url)))
        }
        RedisMode::Cluster => {
            let seeds: Vec<&str> = if config.nodes.is_empty() {
                config.url.iter().map(String::as_str).collect()
            } else {
                config.nodes.iter().map(String::as_str).collect()
            };
            let mut infos = Vec::with_capacity(seeds.len());
            for seed in &seeds {
                infos.push(
                    seed.into_connection_info()
                        .map_err(|e| bad("redis.nodes", e))?,
                );
            }
            let mut builder = ClusterClientBuilder::new(infos)
                // See `pool`: the client never resends on its own.
                .retries(0)
                .connection_timeout(config.connect_timeout.get())
                .tcp_settings(nodelay);
            if let Some(timeout) = response_timeout {
                builder = builder.response_timeout(timeout);
            }
            if let Some(username) = &config.username {
                builder = builder.username(username);
            }
            if let Some(password) = &config.password {
                builder = builder.password(password);
            }
            let client = builder.build().map_err(|e| bad("redis.nodes", e))?;
            let shown: Vec<String> = seeds.iter().map(|s| redact_url(s)).collect();
            Ok((
                Connector::Cluster(client),
                format!("cluster seeds {}", shown.join(",")),
            ))
        }
        RedisMode::Sentinel => {
            let client = sentinel_client(config)?;
            let master = config.master_name.clone().unwrap_or_default();
            let shown: Vec<String> = config.sentinels.iter().map(|s| redact_url(s)).collect();
            Ok((
                Connector::Sentinel {
                    client: tokio::sync::Mutex::new(client),
                    config: connection_config,
                },
                format!("sentinels {} master {master}", shown.join(",")),
            ))
        }
    }
}

/// The connection info of `redis.url` with the username, password and TCP settings of `config`.
pub(super) fn standalone_info(config: &RedisConfig) -> Result<(ConnectionInfo, &str), StoreError> {
    let url = config
        .url
        .as_deref()
        .ok_or_else(|| StoreError::Protocol("redis.url is not set".into()))?;
    let mut info = url
        .into_connection_info()
        .map_err(|e| StoreError::Protocol(format!("redis.url: {e}")))?;
    // Nagle's algorithm against Redis's delayed ACKs adds ~40 ms to pipelined replies.
    info = info.set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    let mut settings = info.redis_settings().clone();
    if let Some(username) = &config.username {
        settings = settings.set_username(username);
    }
    if let Some(password) = &config.password {
        settings = settings.set_password(password);
    }
    Ok((info.set_redis_settings(settings), url))
}

/// A client of the sentinels that finds the master `redis.master_name`.
pub(super) fn sentinel_client(config: &RedisConfig) -> Result<SentinelClient, StoreError> {
    let bad = |key: &str, e: RedisError| StoreError::Protocol(format!("{key}: {e}"));
    let nodelay = redis::io::tcp::TcpSettings::default().set_nodelay(true);
    let master = config.master_name.clone().unwrap_or_default();
    let mut addrs = Vec::with_capacity(config.sentinels.len());
    let mut url_password = None;
    let mut url_username = None;
    for url in &config.sentinels {
        let info = url
            .as_str()
            .into_connection_info()
            .map_err(|e| bad("redis.sentinels", e))?;
        url_password = url_password.or(info.redis_settings().password().map(str::to_owned));
        url_username = url_username.or(info.redis_settings().username().map(str::to_owned));
        addrs.push(info.addr().clone());
    }
    let mut builder = SentinelClientBuilder::new(addrs, master.clone(), SentinelServerType::Master)
        .map_err(|e| bad("redis.sentinels", e))?
        .set_client_to_sentinel_tcp_settings(nodelay.clone())
        .set_client_to_redis_tcp_settings(nodelay);
    if let Some(password) = config.sentinel_password.clone().or(url_password) {
        builder = builder.set_client_to_sentinel_password(password);
    }
    if let Some(username) = url_username {
        builder = builder.set_client_to_sentinel_username(username);
    }
    if let Some(username) = &config.username {
        builder = builder.set_client_to_redis_username(username);
    }
    if let Some(password) = &config.password {
        builder = builder.set_client_to_redis_password(password);
    }
    if config.master_tls {
        builder = builder.set_client_to_redis_tls_mode(redis::TlsMode::Secure);
    }
    builder.build().map_err(|e| bad("redis.sentinels", e))
}

/// How the subscriber connection of the [`Notifier`] is opened in `config`'s mode.
pub(super) fn opener(config: &RedisConfig) -> Result<Opener, StoreError> {
    Ok(match config.mode {
        RedisMode::Standalone => Opener::Single(
            Client::open(standalone_info(config)?.0)
                .map_err(|e| StoreError::Protocol(format!("redis.url: {e}")))?,
        ),
        RedisMode::Sentinel => Opener::Sentinel(tokio::sync::Mutex::new(sentinel_client(config)?)),
        RedisMode::Cluster => {
            let seeds: Vec<&str> = if config.nodes.is_empty() {
                config.url.iter().map(String::as_str).collect()
            } else {
                config.nodes.iter().map(String::as_str).collect()
            };
            let mut clients = Vec::with_capacity(seeds.len());
            for seed in seeds {
                let mut info = seed
                    .into_connection_info()
                    .map_err(|e| StoreError::Protocol(format!("redis.nodes: {e}")))?;
                let mut settings = info.redis_settings().clone();
                if let Some(username) = &config.username {
                    settings = settings.set_username(username);
                }
                if let Some(password) = &config.password {
                    settings = settings.set_password(password);
                }
                info = info.set_redis_settings(settings);
                clients.push(
                    Client::open(info)
                        .map_err(|e| StoreError::Protocol(format!("redis.nodes: {e}")))?,
                );
            }
            Opener::Nodes(clients)
        }
    })
}
