//! Reloading the rules when their files change: polled every `rls.reload_interval` (a
//! Kubernetes ConfigMap swaps a symlink, which file-change events miss), compared by content,
//! loaded whole or not at all.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::sync::watch;

use super::{
    Rls, Rules,
    rules::{config_files, dangling_replaces},
};

/// The contents of the rule files under `path`, to tell a change (a read error counts as one).
fn snapshot(path: &Path) -> Vec<(PathBuf, Result<Vec<u8>, String>)> {
    match config_files(path) {
        Ok(files) => files
            .into_iter()
            .map(|f| {
                let bytes = std::fs::read(&f).map_err(|e| e.to_string());
                (f, bytes)
            })
            .collect(),
        Err(e) => vec![(path.to_owned(), Err(e))],
    }
}

/// Logs what a set of rules holds, and warns about `replaces` that name no rule.
pub fn announce(rules: &Rules, path: &std::path::Path) {
    tracing::info!(
        path = %path.display(),
        domains = ?rules.domain_names(),
        rules = rules.rules().len(),
        files = rules.files().len(),
        "Envoy rate limit rules loaded"
    );
    for warning in dangling_replaces(rules) {
        tracing::warn!("{warning}");
    }
}

/// Re-reads the rules under `path` every `every` until `stop`; a change that loads replaces the
/// rules in force, one that does not is logged with every error and changes nothing.
pub async fn watch_rules(
    rls: Rls,
    path: PathBuf,
    merge: bool,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut seen = snapshot(&path);
    metrics::gauge!("flowstate_rls_config_reload_failing").set(0.0);
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = snapshot(&path);
        if now == seen {
            continue;
        }
        seen = now;
        match Rules::load(&path, merge) {
            Ok(rules) => {
                announce(&rules, &path);
                rls.replace_rules(rules);
                metrics::counter!("flowstate_rls_config_loads_total", "result" => "ok")
                    .increment(1);
                metrics::gauge!("flowstate_rls_config_reload_failing").set(0.0);
            }
            Err(e) => {
                metrics::counter!("flowstate_rls_config_loads_total", "result" => "error")
                    .increment(1);
                metrics::gauge!("flowstate_rls_config_reload_failing").set(1.0);
                tracing::error!(
                    path = %path.display(),
                    errors = %e,
                    "the Envoy rate limit rules are invalid: the rules in force stay"
                );
            }
        }
    }
}
