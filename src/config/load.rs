//! Layering: built-in defaults < TOML file < `FLOWSTATE_…` environment variables, with every
//! unknown key and bad value reported with the source it came from.

use std::{collections::BTreeMap, path::Path};

use super::{Config, ConfigError};

/// Prefix of every configuration environment variable.
pub const ENV_PREFIX: &str = "FLOWSTATE_";
/// Environment variables with this prefix are read by the test suite, never as configuration.
const TEST_ENV_PREFIX: &str = "FLOWSTATE_TEST_";
/// Nesting separator in environment variable names.
const ENV_SEPARATOR: &str = "__";

impl Config {
    /// Loads defaults, then `file` (if given), then the `FLOWSTATE_…` variables among `env`, and
    /// validates the result. `env` is passed in (normally `std::env::vars()`) so tests need not
    /// touch the process environment.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let env: BTreeMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && !k.starts_with(TEST_ENV_PREFIX))
            .collect();
        let mut builder =
            config::Config::builder().add_source(config::Config::try_from(&Config::default())?);
        if let Some(path) = file {
            builder = builder.add_source(
                config::File::from(path)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        let env_source = config::Environment::with_prefix(ENV_PREFIX.trim_end_matches('_'))
            .prefix_separator("_")
            .separator(ENV_SEPARATOR)
            .source(Some(env.clone().into_iter().collect()));
        let merged = builder
            .add_source(env_source)
            .build()
            .map_err(|e| with_source(e, file, &env))?;

        let mut unknown = Vec::new();
        let config: Config =
            serde_ignored::deserialize(merged, |path| unknown.push(path.to_string()))
                .map_err(|e| with_source(e, file, &env))?;
        if !unknown.is_empty() {
            let named = unknown
                .into_iter()
                .map(|key| format!("`{key}` ({})", key_source(&key, file, &env)))
                .collect();
            return Err(ConfigError::UnknownKeys(named));
        }
        config.validate()?;
        Ok(config)
    }
}

/// Adds the source to a load error that names a key but not where its value came from
/// (the `config` crate knows it for type errors, not for values a deserializer refused).
fn with_source(
    e: config::ConfigError,
    file: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> ConfigError {
    let message = e.to_string();
    let key = message
        .split_once("for key `")
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(key, _)| key.to_owned());
    match key {
        Some(key) if !message.contains(" in ") => ConfigError::Invalid(vec![format!(
            "{message} (from {})",
            key_source(&key, file, env)
        )]),
        _ => ConfigError::Load(e),
    }
}

/// Says where an unknown key came from: the env var that set it, else the file.
fn key_source(key: &str, file: Option<&Path>, env: &BTreeMap<String, String>) -> String {
    let var = format!(
        "{ENV_PREFIX}{}",
        key.to_ascii_uppercase().replace('.', ENV_SEPARATOR)
    );
    let nested = format!("{var}{ENV_SEPARATOR}");
    if let Some(found) = env.keys().find(|k| **k == var || k.starts_with(&nested)) {
        format!("environment variable {found}")
    } else if let Some(path) = file {
        format!("file {}", path.display())
    } else {
        "unknown source".to_owned()
    }
}
