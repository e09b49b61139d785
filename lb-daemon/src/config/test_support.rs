//! What the config tests of several modules (`[bgp]`, `[fleet]`, `[sync]`) start from.

use super::{Config, ConfigError};

/// A valid config with one DSR service "web" (VIP 192.0.2.10:80, one pool), the base the fleet
/// tables are added to: a fleet allows `dsr` only.
pub(crate) const DSR: &str = r#"
interfaces = ["eth0"]

[[services]]
name = "web"
vips = ["192.0.2.10:80"]
mode = "dsr"
active = "pool-a"

[services.pools.pool-a]
backends = ["10.0.1.1:80"]
"#;

/// The (key, reason) of every problem validation finds in `text`; none when it is valid.
/// Panics on an error that is not a validation error (bad TOML, an unknown key).
pub(crate) fn problems(text: &str) -> Vec<(String, String)> {
    match Config::from_toml_str(text) {
        Ok(_) => Vec::new(),
        Err(ConfigError::Invalid(p)) => p.into_iter().map(|p| (p.key, p.reason)).collect(),
        Err(e) => panic!("not a validation error: {e}"),
    }
}
