//! Config files (`configs/*.toml`, or JSON): each concern reads its own table.

use std::path::Path;

use anyhow::Context;
use serde::de::DeserializeOwned;

use crate::data::DataSpec;
use crate::error::InputError;

/// Parses a whole config file as TOML (`.toml`) or JSON (anything else that starts with `{`).
pub fn load_value(path: &Path) -> anyhow::Result<serde_json::Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| InputError::file(path, format!("cannot read config: {e}")))?;
    let is_json =
        path.extension().is_some_and(|e| e == "json") || text.trim_start().starts_with('{');
    if is_json {
        serde_json::from_str(&text)
            .map_err(|e| InputError::file(path, format!("invalid JSON: {e}")).into())
    } else {
        let value: toml::Value = toml::from_str(&text)
            .map_err(|e| InputError::file(path, format!("invalid TOML: {}", e.message())))?;
        serde_json::to_value(value).context("config to JSON")
    }
}

/// Reads table `name` of the config into `T` (its defaults when the table is absent).
pub fn load_section<T: DeserializeOwned + Default>(path: &Path, name: &str) -> anyhow::Result<T> {
    let value = load_value(path)?;
    match value.get(name) {
        None => Ok(T::default()),
        Some(section) => serde_json::from_value(section.clone())
            .map_err(|e| InputError::file(path, format!("[{name}]: {e}")).into()),
    }
}

/// The `[data]` table of a config.
pub fn load_data_section(path: &Path) -> anyhow::Result<DataSpec> {
    load_section(path, "data")
}
