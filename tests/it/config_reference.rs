//! `docs/configuration.md` is the configuration reference, and this keeps it true: every key the
//! built-in defaults and `examples/flowstate.toml` produce has a row, every row is a key the
//! loader knows (an unknown one would be refused at start-up), and each row's environment
//! variable is the one the loader reads for it.

use std::{collections::BTreeSet, path::Path};

use flowstate::config::Config;
use toml::Value;

/// Where the reference and the example live.
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// One row of the reference: its key (`cache.namespaces.<name>.ttl`) and its env var cell.
struct Row {
    key: String,
    env: Option<String>,
}

/// The rows of every `| key | env var | default | meaning |` table.
fn reference() -> Vec<Row> {
    let text = std::fs::read_to_string(root().join("docs/configuration.md"))
        .expect("docs/configuration.md");
    let mut rows = Vec::new();
    let mut in_table = false;
    for line in text.lines() {
        if line.starts_with("| key | env var |") {
            in_table = true;
            continue;
        }
        if !line.starts_with('|') {
            in_table = false;
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if !in_table || cells.len() < 4 || cells[1].starts_with("---") {
            continue;
        }
        let key = cells[1].trim_matches('`').to_owned();
        let env = cells[2]
            .strip_prefix('`')
            .and_then(|e| e.split('`').next())
            .map(str::to_owned);
        rows.push(Row { key, env });
    }
    rows
}

/// Whether the documented key pattern `doc` (`<name>` matches any one segment) names `key`.
fn matches(doc: &str, key: &str) -> bool {
    let (d, k): (Vec<&str>, Vec<&str>) = (doc.split('.').collect(), key.split('.').collect());
    d.len() == k.len() && d.iter().zip(&k).all(|(d, k)| d == k || *d == "<name>")
}

/// The leaf keys of `value` under `path`: tables are descended, arrays of tables become
/// `path[]`, an empty array and any other value is a leaf.
fn leaves(path: &str, value: &Value, out: &mut BTreeSet<String>) {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_owned()
        } else {
            format!("{path}.{k}")
        }
    };
    match value {
        Value::Table(t) => {
            for (k, v) in t {
                leaves(&join(k), v, out);
            }
        }
        Value::Array(items) if items.iter().any(Value::is_table) => {
            for item in items {
                leaves(&format!("{path}[]"), item, out);
            }
        }
        _ => {
            out.insert(path.to_owned());
        }
    }
}

/// Every key the defaults and the example configuration serialize.
fn serialized_keys() -> BTreeSet<String> {
    let example = Config::load(
        Some(&root().join("examples/flowstate.toml")),
        Vec::<(String, String)>::new(),
    )
    .expect("examples/flowstate.toml loads");
    let mut keys = BTreeSet::new();
    for config in [Config::default(), example] {
        let value = Value::try_from(&config).expect("the configuration serializes");
        leaves("", &value, &mut keys);
    }
    keys
}

/// Whether the loader knows `doc` (a documented key pattern): a configuration holding just that
/// key, with `<name>` as `probe` and one element per `[]`, is deserialized while unknown keys are
/// collected. A wrong type or a missing sibling is an error, but not an unknown key.
fn known(doc: &str) -> bool {
    let mut value = Value::String("probe".into());
    for segment in doc.replace("<name>", "probe").rsplit('.') {
        let (name, array) = match segment.strip_suffix("[]") {
            Some(name) => (name, true),
            None => (segment, false),
        };
        let inner = std::mem::replace(&mut value, Value::Boolean(false));
        let inner = if array {
            Value::Array(vec![inner])
        } else {
            inner
        };
        value = Value::Table([(name.to_owned(), inner)].into_iter().collect());
    }
    let mut unknown = Vec::new();
    let result = serde_ignored::deserialize::<_, _, Config>(value, |path| {
        unknown.push(path.to_string());
    });
    // Sections that deny unknown fields refuse the key outright instead of reporting it.
    let denied = matches!(&result, Err(e) if e.to_string().contains("unknown field"));
    unknown.is_empty() && !denied
}

#[test]
fn every_key_is_documented() {
    let rows = reference();
    assert!(rows.len() > 100, "only {} rows read", rows.len());
    let undocumented: Vec<String> = serialized_keys()
        .into_iter()
        .filter(|key| {
            !rows.iter().any(|r| {
                matches(&r.key, key)
                    // An empty array of tables (`queues.queues = []`) is covered by its rows.
                    || r.key.starts_with(&format!("{key}[]."))
            })
        })
        .collect();
    assert!(
        undocumented.is_empty(),
        "keys missing from docs/configuration.md: {undocumented:?}"
    );
}

#[test]
fn every_documented_key_is_known() {
    let rows = reference();
    let mut seen = BTreeSet::new();
    let unknown: Vec<&str> = rows
        .iter()
        .map(|r| r.key.as_str())
        .filter(|key| !known(key))
        .collect();
    assert!(
        unknown.is_empty(),
        "docs/configuration.md documents keys the loader refuses: {unknown:?}"
    );
    let twice: Vec<&str> = rows
        .iter()
        .map(|r| r.key.as_str())
        .filter(|k| !seen.insert(*k))
        .collect();
    assert!(twice.is_empty(), "documented twice: {twice:?}");
}

#[test]
fn the_probe_tells_known_from_unknown_keys() {
    // The check above is only as good as this: a typo must be caught, in every shape of key.
    for good in [
        "server.listen",
        "cache.namespaces.<name>.ttl",
        "queues.queues[].pattern",
    ] {
        assert!(known(good), "{good}");
    }
    for bad in [
        "server.listne",
        "cache.namespaces.<name>.tll",
        "queues.queues[].patern",
        "nosuchsection.key",
    ] {
        assert!(!known(bad), "{bad}");
    }
}

#[test]
fn each_env_var_is_the_one_the_loader_reads() {
    let wrong: Vec<String> = reference()
        .into_iter()
        .filter_map(|r| {
            let env = r.env?;
            let want = format!(
                "FLOWSTATE_{}",
                r.key.replace("<name>", "<NAME>").replace('.', "__")
            )
            .to_uppercase();
            (env != want).then(|| format!("{}: {env} (want {want})", r.key))
        })
        .collect();
    assert!(wrong.is_empty(), "{wrong:?}");
}
