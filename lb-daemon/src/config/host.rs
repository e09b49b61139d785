//! Checks of a configuration against this host, as start-up meets it (also run by `--check`).

use super::{Config, ConfigError, MIN_TOKEN_LEN, validate::Problems};
use std::path::Path;

/// What [`Config::check_host`] found on this host, when nothing stops a start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCheck {
    /// The API's bearer token (`api.token`, or the contents of `api.token_file`).
    pub token: Option<String>,
    /// The read-only bearer token (`api.read_token`, or the contents of `api.read_token_file`).
    pub read_token: Option<String>,
    /// Things that work but should be fixed (e.g. a token file readable by others).
    pub warnings: Vec<String>,
}

/// Reads a bearer token file: the token (without surrounding whitespace) and a warning when
/// users other than its owner and group may read it; or why it cannot be used.
fn read_token_file(key: &str, file: &Path) -> Result<(String, Option<String>), String> {
    use std::os::unix::fs::PermissionsExt;
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let token = text.trim();
    let n = token.chars().count();
    if n < MIN_TOKEN_LEN {
        return Err(format!(
            "the token in {} is too short ({n} characters); use at least {MIN_TOKEN_LEN}",
            file.display()
        ));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "the token in {} must be printable ASCII without spaces (it travels in an HTTP header)",
            file.display()
        ));
    }
    let mode = std::fs::metadata(file).map(|m| m.permissions().mode()).unwrap_or(0);
    let warning = (mode & 0o004 != 0).then(|| {
        format!(
            "{key} {} is readable by every user (mode {:o}): `chmod o-r` it",
            file.display(),
            mode & 0o7777
        )
    });
    Ok((token.to_owned(), warning))
}

impl Config {
    /// Checks what the file can only be checked against on this host, as start-up would meet
    /// it: every interface exists (in this network namespace), and `api.token_file` is
    /// readable and holds a valid token. Returns the API token (inline or from the file) and
    /// warnings (a token file others may read). `lb-daemon --check` runs this too, so it
    /// refuses what start-up would refuse.
    pub fn check_host(&self) -> Result<HostCheck, ConfigError> {
        let mut p = Problems::default();
        for (i, name) in self.interfaces.iter().enumerate() {
            if let Err(e) = nix::net::if_::if_nametoindex(name.as_str()) {
                let why = if e == nix::errno::Errno::ENODEV {
                    "no such interface".to_owned()
                } else {
                    e.to_string()
                };
                p.push(format!("interfaces[{i}]"), format!("{name:?}: {why} (in this network namespace)"));
            }
        }
        let mut host = HostCheck {
            token: self.api.token.clone(),
            read_token: self.api.read_token.clone(),
            warnings: Vec::new(),
        };
        if let Some(file) = &self.api.token_file {
            match read_token_file("api.token_file", file) {
                Ok((token, warning)) => {
                    host.token = Some(token);
                    host.warnings.extend(warning);
                }
                Err(reason) => p.push("api.token_file", reason),
            }
        }
        if let Some(file) = &self.api.read_token_file {
            match read_token_file("api.read_token_file", file) {
                Ok((token, warning)) => {
                    host.read_token = Some(token);
                    host.warnings.extend(warning);
                }
                Err(reason) => p.push("api.read_token_file", reason),
            }
        }
        if host.read_token.is_some() && host.read_token == host.token {
            p.push("api.read_token", "the read-only token equals api.token (it would grant full access)");
        }
        if p.0.is_empty() { Ok(host) } else { Err(ConfigError::Invalid(p.0)) }
    }
}
