//! flowstate as a process of its own (the built binary), for what a test cannot do inside its
//! own process: a wall clock shifted with libfaketime, or the process-global metrics recorder.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use super::{eventually, free_port};

/// A flowstate process on a free port, killed on drop.
pub struct Process {
    child: Child,
    pub channel: Channel,
}

/// The libfaketime preload library (Debian's `faketime` package), wherever its multiarch
/// directory is.
pub fn libfaketime() -> std::path::PathBuf {
    std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|dir| dir.path().join("faketime/libfaketime.so.1"))
        .chain(std::iter::once("/usr/lib/faketime/libfaketime.so.1".into()))
        .find(|p| p.exists())
        .expect("libfaketime.so.1 not found: apt-get install faketime")
}

impl Process {
    /// Starts the binary with `env` (`FLOWSTATE_…` settings; metrics off and logs at warn
    /// unless `env` says otherwise), its wall clock shifted by `skew_ms` (libfaketime; the
    /// monotonic clock stays real), and waits until it is ready.
    pub async fn start(env: &[(&str, &str)], skew_ms: i64) -> Self {
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowstate"));
        cmd.env_clear()
            .env("FLOWSTATE_SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .env("FLOWSTATE_METRICS__ENABLED", "false")
            .env("FLOWSTATE_LOG__LEVEL", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if skew_ms != 0 {
            cmd.env("LD_PRELOAD", libfaketime())
                .env("FAKETIME", format!("{:+.3}", skew_ms as f64 / 1000.0))
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        let child = cmd.spawn().expect("spawn flowstate");
        let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .expect("endpoint")
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy();
        let process = Self { child, channel };
        let ready = eventually(Duration::from_secs(20), || {
            let mut health = HealthClient::new(process.channel.clone());
            async move {
                health
                    .check(HealthCheckRequest {
                        service: "readiness".into(),
                    })
                    .await
                    .is_ok_and(|r| r.into_inner().status() == ServingStatus::Serving)
            }
        })
        .await;
        assert!(ready, "flowstate (skew {skew_ms} ms) never became ready");
        process
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
