//! The `flowstate` binary: configuration errors, the `config` and `keys` commands, signals.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

fn flowstate() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowstate"));
    // Start from a clean slate: the developer's own FLOWSTATE_* variables must not leak in.
    for (k, _) in std::env::vars() {
        if k.starts_with("FLOWSTATE_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd
}

#[test]
fn config_command_prints_the_effective_config_with_secrets_redacted() {
    let out = flowstate()
        .arg("config")
        .env(
            "FLOWSTATE_REDIS__URL",
            "redis://app:s3cret@redis.internal:6379/0",
        )
        .env("FLOWSTATE_SESSION__IDLE_TIMEOUT", "2h")
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("redis://app:***@redis.internal:6379/0"),
        "{text}"
    );
    assert!(!text.contains("s3cret"), "{text}");
    assert!(text.contains("idle_timeout = \"2h\""), "{text}");
    assert!(text.contains("listen = \"127.0.0.1:50051\""), "{text}");
}

#[test]
fn keys_new_prints_a_key_once_and_keys_check_vets_a_keys_file() {
    let out = flowstate()
        .args([
            "keys",
            "new",
            "--tenant",
            "acme",
            "--allow",
            "cache:*,sessions:read",
        ])
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    let [key, line] = lines[..] else {
        panic!("expected a key and a line: {text}");
    };
    assert!(key.starts_with("fs_"), "{key}");
    assert!(!line.contains(key), "the line holds a hash, not the key");
    assert!(line.contains("acme"), "{line}");

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keys");
    std::fs::write(&path, format!("# keys\n{line}\n")).expect("write");
    let checked = flowstate()
        .args(["keys", "check"])
        .arg(&path)
        .output()
        .expect("run");
    assert!(checked.status.success(), "{checked:?}");
    let report = String::from_utf8_lossy(&checked.stdout);
    assert!(
        report.contains("1 keys") && report.contains("tenant acme: 1"),
        "{report}"
    );

    std::fs::write(&path, format!("{line}\n{line}\nnot a key line\n")).expect("write");
    let bad = flowstate()
        .args(["keys", "check"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    let errors = String::from_utf8_lossy(&bad.stderr);
    assert!(errors.contains(":2:") && errors.contains(":3:"), "{errors}");
}

#[test]
fn unknown_keys_and_bad_values_stop_start_up_naming_key_and_source() {
    let out = flowstate()
        .arg("config")
        .env("FLOWSTATE_REDIS__URI", "redis://localhost")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("redis.uri") && err.contains("FLOWSTATE_REDIS__URI"),
        "{err}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("flowstate.toml");
    std::fs::write(&file, "[server]\nrequest_timeout = \"soon\"\n").expect("write");
    let out = flowstate()
        .args(["--config", file.to_str().expect("utf-8 path"), "config"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.request_timeout"), "{err}");
    assert!(err.contains("flowstate.toml"), "names the file: {err}");
}

#[test]
fn sigterm_shuts_the_server_down_cleanly() {
    let mut child = flowstate()
        .env("FLOWSTATE_SERVER__LISTEN", "127.0.0.1:0")
        // An ephemeral metrics port too: 9464 may be taken on a shared machine.
        .env("FLOWSTATE_METRICS__LISTEN", "127.0.0.1:0")
        .env("FLOWSTATE_LOG__FORMAT", "json")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut saw_memory_warning = false;
    for line in lines.by_ref() {
        let line = line.expect("log line");
        saw_memory_warning |= line.contains("WARN") && line.contains("in-memory store");
        if line.contains("flowstate serving gRPC") {
            break;
        }
    }
    assert!(
        saw_memory_warning,
        "the memory store must be announced with a WARN"
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let exit = child.wait().expect("wait");
    assert!(exit.success(), "exit status {exit:?}; logs: {rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("SIGTERM received")),
        "{rest:?}"
    );
    assert!(
        rest.iter().any(|l| l.contains("flowstate stopped")),
        "{rest:?}"
    );
}
