//! envoyproxy/ratelimit's own configurations (its examples, its README's examples, its test and
//! integration configs, copied unchanged into `tests/fixtures/envoyproxy-ratelimit/`) load in
//! flowstate, and the ones it refuses are refused here too, each error naming its file and line.

use std::path::{Path, PathBuf};

use flowstate::rls::Rules;

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/envoyproxy-ratelimit"
);

fn files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(Path::new(FIXTURES).join(dir))
        .expect("fixtures")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
}

#[test]
fn every_documented_and_tested_configuration_loads() {
    let good: Vec<PathBuf> = files("good").into_iter().chain(files("readme")).collect();
    assert!(good.len() >= 25, "{} files", good.len());
    let mut rules = 0;
    for file in &good {
        let loaded = Rules::load(file, false)
            .unwrap_or_else(|e| panic!("{} must load: {e}", file.display()));
        assert!(!loaded.domain_names().is_empty(), "{}", file.display());
        rules += loaded.rules().len();
    }
    assert!(rules > 50, "{rules} rules");
}

#[test]
fn a_directory_loads_whole_and_its_lookups_work() {
    // envoyproxy/ratelimit's examples/ratelimit/config/ directory, as its docker-compose mounts it.
    let dir = tempfile::tempdir().expect("tempdir");
    for f in ["examples_config.yaml", "examples_example.yaml"] {
        std::fs::copy(Path::new(FIXTURES).join("good").join(f), dir.path().join(f)).expect("copy");
    }
    std::fs::write(dir.path().join(".hidden.yaml"), "not: [valid").expect("dot file");
    std::fs::write(dir.path().join("notes.txt"), "not yaml").expect("other file");
    let rules = Rules::load(dir.path(), false).expect("directory");
    assert_eq!(rules.domain_names(), vec!["mongo_cps", "rl"]);
    // examples/ratelimit/config/example.yaml, as the envoyproxy/ratelimit docs describe it.
    let m = rules
        .find("rl", &[("foo", "x"), ("bar", "bkthomps")])
        .expect("foo/bar_bkthomps");
    assert_eq!(m.rule.name, "bkthomps");
    let m = rules
        .find(
            "rl",
            &[("source_cluster", "proxy"), ("destination_cluster", "mock")],
        )
        .expect("nested");
    assert_eq!(m.rule.path, "source_cluster_proxy.destination_cluster_mock");
    assert!(rules.find("rl", &[("nothing", "x")]).is_none());
}

#[test]
fn what_envoyproxy_ratelimit_refuses_is_refused_with_file_and_line() {
    for file in files("bad") {
        let err = Rules::load(&file, false)
            .err()
            .unwrap_or_else(|| panic!("{} must be refused", file.display()))
            .to_string();
        let name = file.display().to_string();
        assert!(err.starts_with(&name), "{name}: {err}");
        // Every message has a line number after the file name (but an empty file, which has
        // no line to point at).
        let rest = &err[name.len()..];
        assert!(
            rest.starts_with(':') || rest.starts_with(": empty"),
            "{name}: {err}"
        );
    }
}

#[test]
fn one_domain_in_two_files_needs_merging() {
    let dir = tempfile::tempdir().expect("tempdir");
    for f in ["merge_domain_key1.yaml", "merge_domain_key2.yaml"] {
        std::fs::copy(Path::new(FIXTURES).join(f), dir.path().join(f)).expect("copy");
    }
    let err = Rules::load(dir.path(), false)
        .expect_err("duplicate domain")
        .to_string();
    assert!(err.contains("duplicate domain 'test-domain'"), "{err}");
    let merged = Rules::load(dir.path(), true).expect("merged");
    assert!(merged.find("test-domain", &[("key1", "value1")]).is_some());
    assert!(merged.find("test-domain", &[("key2", "value2")]).is_some());
}
