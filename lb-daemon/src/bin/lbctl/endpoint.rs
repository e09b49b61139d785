//! Who lbctl talks to and who it says it is: the endpoint from `--socket`, `--url`,
//! `--token-file` and `LB_TOKEN`, and the requester recorded in the daemon's history.

use std::path::{Path, PathBuf};

use lb_daemon::api::client::Endpoint;

/// The endpoint from the global options, or a usage error message.
pub fn from_cli(url: Option<&str>, socket: &Path, token_file: Option<&Path>) -> Result<Endpoint, String> {
    let Some(url) = url else { return Ok(Endpoint::Unix(PathBuf::from(socket))) };
    if url.starts_with("https://") {
        return Err(
            "--url: TLS is not supported; use http (HOST:PORT) over a trusted network or a tunnel".into()
        );
    }
    let addr = url.strip_prefix("http://").unwrap_or(url).trim_end_matches('/');
    if addr.is_empty() || addr.contains('/') || !addr.contains(':') {
        return Err(format!("--url {url:?}: expected HOST:PORT"));
    }
    let token = match token_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?,
        None => std::env::var("LB_TOKEN").unwrap_or_default(),
    };
    let token = token.trim().to_owned();
    if token.is_empty() {
        return Err("--url needs a token: --token-file PATH or the LB_TOKEN environment variable".into());
    }
    Ok(Endpoint::Tcp { addr: addr.to_owned(), token })
}

/// `lbctl/<version> host=<host>[ sudo_user=<user>][ ci=<id>]` for this process: context for
/// the history. The user itself is not sent: the daemon records the name of the caller's uid
/// from the socket's peer credentials (over TCP: the token).
pub fn requester() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into());
    requester_from(|name| std::env::var(name).ok(), &host)
}

/// `lbctl/<version> host=<host>[ sudo_user=<user>][ ci=<id>]`, from `env` lookups.
fn requester_from(env: impl Fn(&str) -> Option<String>, host: &str) -> String {
    let var = |name: &str| env(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let mut s = format!("lbctl/{} host={host}", env!("CARGO_PKG_VERSION"));
    // Who ran sudo: the daemon sees root's uid, this says on whose behalf (as sudo tells).
    if let Some(user) = var("SUDO_USER") {
        s.push_str(&format!(" sudo_user={user}"));
    }
    if let Some(run) = var("GITHUB_RUN_ID") {
        let job = var("GITHUB_JOB").unwrap_or_else(|| "?".into());
        s.push_str(&format!(" ci=github:{run}/{job}"));
    } else if let Some(job) = var("CI_JOB_ID") {
        s.push_str(&format!(" ci=gitlab:{job}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requester_names_user_host_and_ci() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };
        let v = env!("CARGO_PKG_VERSION");
        assert_eq!(
            requester_from(env(&[("USER", "root"), ("SUDO_USER", "alice")]), "edge1"),
            format!("lbctl/{v} host=edge1 sudo_user=alice")
        );
        // $USER is not sent: the daemon names the user from the socket's peer credentials.
        assert_eq!(requester_from(env(&[("USER", "mallory")]), "h"), format!("lbctl/{v} host=h"));
        assert_eq!(
            requester_from(env(&[("USER", "ci"), ("GITHUB_RUN_ID", "77"), ("GITHUB_JOB", "deploy")]), "h"),
            format!("lbctl/{v} host=h ci=github:77/deploy")
        );
        assert_eq!(
            requester_from(env(&[("USER", "ci"), ("CI_JOB_ID", "42")]), "h"),
            format!("lbctl/{v} host=h ci=gitlab:42")
        );
    }

    #[test]
    fn urls_and_tokens() {
        let sock = Path::new("/run/lb/lb.sock");
        assert_eq!(from_cli(None, sock, None).unwrap(), Endpoint::Unix(sock.into()));
        assert!(from_cli(Some("https://h:1"), sock, None).unwrap_err().contains("TLS"));
        assert!(from_cli(Some("h"), sock, None).unwrap_err().contains("HOST:PORT"));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, " s3cret\n").unwrap();
        assert_eq!(
            from_cli(Some("http://h:1/"), sock, Some(&file)).unwrap(),
            Endpoint::Tcp { addr: "h:1".into(), token: "s3cret".into() }
        );
        assert!(
            from_cli(Some("h:1"), sock, Some(&dir.path().join("none"))).unwrap_err().contains("token file")
        );
    }
}
