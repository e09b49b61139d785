//! One probe of one backend: a TCP connection, then for an HTTP check `GET <http_path>` and
//! its status line, bounded by the check's timeout. A failure is classified: the backend's, or
//! the checker's own (see the parent module's doc).

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::HealthConfig;

/// Longest HTTP status line read before a probe gives up on it.
const MAX_STATUS_LINE: usize = 1024;

/// Why a probe failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ProbeError {
    /// The backend did not pass: it counts towards `fall`.
    Backend(String),
    /// The checker could not probe (its own resources): the backend keeps its state.
    Local(String),
}

/// Errors of this process or host rather than of the backend.
fn is_local(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS | libc::EADDRNOTAVAIL)
    )
}

/// An I/O error of a probe, classified.
fn io_failure(what: &str, e: std::io::Error) -> ProbeError {
    if is_local(&e) {
        ProbeError::Local(format!("{what}: {e}"))
    } else {
        ProbeError::Backend(format!("{what}: {e}"))
    }
}

/// One probe, bounded by the timeout.
pub(super) async fn probe(addr: SocketAddr, check: &HealthConfig) -> Result<(), ProbeError> {
    let mut phase = "connecting";
    match tokio::time::timeout(check.timeout, attempt(addr, check, &mut phase)).await {
        Ok(result) => result,
        Err(_) => Err(ProbeError::Backend(format!(
            "timed out after {} {phase}",
            humantime::format_duration(check.timeout)
        ))),
    }
}

/// One probe without its bound; `phase` says what it was doing when it is cut short.
async fn attempt(addr: SocketAddr, check: &HealthConfig, phase: &mut &'static str) -> Result<(), ProbeError> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| io_failure("connect", e))?;
    let Some(path) = &check.http_path else {
        return Ok(());
    };
    *phase = "sending the HTTP request";
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: lb-daemon-health\r\n\
         Connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.map_err(|e| io_failure("sending the HTTP request", e))?;
    *phase = "waiting for the HTTP status line";
    let line = read_status_line(&mut stream).await.map_err(ProbeError::Backend)?;
    let code = parse_status_code(&line).map_err(ProbeError::Backend)?;
    let (lo, hi) = check.http_status;
    if (lo..=hi).contains(&code) {
        Ok(())
    } else {
        Err(ProbeError::Backend(format!("HTTP status {code} (expected {lo}..={hi})")))
    }
}

/// Reads up to the first line feed (the status line, without its line end).
async fn read_status_line(stream: &mut TcpStream) -> Result<String, String> {
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 256];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|e| format!("reading the HTTP response: {e}"))?;
        if n == 0 {
            return Err(if buf.is_empty() {
                "connection closed without an HTTP response".to_owned()
            } else {
                format!("connection closed inside the HTTP status line {:?}", String::from_utf8_lossy(&buf))
            });
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            buf.truncate(end);
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(String::from_utf8_lossy(&buf).into_owned());
        }
        if buf.len() > MAX_STATUS_LINE {
            return Err(format!("HTTP status line longer than {MAX_STATUS_LINE} bytes"));
        }
    }
}

/// The code of a status line such as `HTTP/1.1 200 OK`.
fn parse_status_code(line: &str) -> Result<u16, String> {
    let mut parts = line.split(' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if version.starts_with("HTTP/") && code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()) {
        code.parse().map_err(|_| format!("malformed HTTP status line {line:?}"))
    } else {
        let shown: String = line.chars().take(100).collect();
        Err(format!("malformed HTTP status line {shown:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_code("HTTP/1.1 200 OK"), Ok(200));
        assert_eq!(parse_status_code("HTTP/1.0 503 Service Unavailable"), Ok(503));
        assert_eq!(parse_status_code("HTTP/1.1 204"), Ok(204));
        for bad in ["", "HTTP/1.1", "HTTP/1.1 20 OK", "HTTP/1.1 2000", "SSH-2.0-OpenSSH", "ICY 200 OK"] {
            let err = parse_status_code(bad).unwrap_err();
            assert!(err.starts_with("malformed HTTP status line"), "{bad}: {err}");
        }
    }
}
