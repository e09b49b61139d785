//! Who asked, for the history and the logs: the daemon decides, the client does not. Over the
//! Unix socket the user is the name of the caller's uid, read from the socket's peer
//! credentials (SO_PEERCRED); over TCP it is [`TCP_USER`], the bearer token being the only
//! identity a TCP caller proves. What the client says about itself (`X-LB-Requester`: tool,
//! host, CI job) follows in parentheses as context, with any `user=` it claims left out, then
//! the peer (`uid=1000 pid=4242`, `tcp:192.0.2.1:50000`).

use super::*;

/// The user recorded for requests over TCP: whoever holds the API token.
pub const TCP_USER: &str = "api-token";

/// The name of `uid` in the user database (`getpwuid_r`), else `uid:N`.
///
/// Called once per Unix connection, on accept: with a local passwd file that takes
/// microseconds.
pub(super) fn user_of_uid(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) => user.name,
        _ => format!("uid:{uid}"),
    }
}

/// The history's "who asked": `user (claimed context; peer)`, e.g.
/// `alice (lbctl/0.1.0 host=edge1 ci=github:77/deploy; uid=1000 pid=4242)`.
pub(super) fn requester(headers: &HeaderMap, user: &str, peer: &str) -> String {
    let claimed: String = headers
        .get("x-lb-requester")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    // The user is the daemon's to say: a claimed one would only contradict it.
    let claimed: Vec<&str> = claimed.split_whitespace().filter(|w| !w.starts_with("user=")).collect();
    let claimed: String = claimed.join(" ").chars().take(MAX_REQUESTER_CHARS).collect();
    let claimed = claimed.trim_end();
    if claimed.is_empty() { format!("{user} ({peer})") } else { format!("{user} ({claimed}; {peer})") }
}
