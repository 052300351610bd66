//! Loading: TOML file < environment < command-line flags, then validation.
use std::path::PathBuf;

use super::Settings;

/// Values given on the command line or in the environment; `None` = not given.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub upstream: Option<String>,
    pub pool_mode: Option<String>,
    pub pool_size: Option<u32>,
}

/// Every problem found, each naming its key.
#[derive(Debug, thiserror::Error)]
#[error("{}", .errors.join("\n"))]
pub struct ConfigError {
    pub errors: Vec<String>,
}

pub fn load(file: Option<&PathBuf>, overrides: &Overrides) -> Result<Settings, ConfigError> {
    let _ = (file, overrides);
    Err(ConfigError {
        errors: vec!["not yet implemented".into()],
    })
}
