//! A small blocking HTTP/1.1 client of the management API, over the Unix socket or over TCP
//! with a bearer token. It is what `lbctl` (and the tests) talk to the daemon with.
//!
//! std only on purpose: no async runtime to start, so `lbctl switch` spends its time in the
//! daemon, not in its own start-up. One request per connection (`Connection: close`); every
//! request carries an `X-LB-Requester` header naming who asks, for the switch history. The
//! whole exchange (connect, send, receive) shares one deadline.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::model::{ApiError, ErrorBody};

/// Largest response body accepted (status with many backends or a long history are well
/// below this).
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Largest response head (status line and headers) accepted.
const MAX_HEAD_BYTES: usize = 64 << 10;

/// Where the daemon's API is.
#[derive(Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// The Unix socket (default `/run/lb/lb.sock`); no token, the socket's mode is the access
    /// control.
    Unix(PathBuf),
    /// TCP `host:port`, authenticated with a bearer token.
    Tcp {
        /// `host:port`.
        addr: String,
        /// Bearer token (sent as `Authorization: Bearer <token>`; empty: none sent).
        token: String,
    },
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token stays out of debug output and logs.
        match self {
            Endpoint::Unix(path) => f.debug_tuple("Unix").field(path).finish(),
            Endpoint::Tcp { addr, .. } => {
                f.debug_struct("Tcp").field("addr", addr).field("token", &"<token>").finish()
            }
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "{}", path.display()),
            Endpoint::Tcp { addr, .. } => write!(f, "{addr}"),
        }
    }
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Could not connect: no socket, nobody listening, permission denied, name resolution or
    /// connect timeout.
    #[error("cannot reach lb-daemon at {endpoint}: {source}")]
    Unreachable {
        /// The endpoint as displayed (socket path or `host:port`).
        endpoint: String,
        /// What connecting failed with.
        source: io::Error,
    },
    /// The daemon answered with a non-2xx status and a JSON error body.
    #[error("{error}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The error from the body.
        error: ApiError,
    },
    /// Anything else: a malformed or truncated response, a timeout after connecting, a request
    /// that could not be sent.
    #[error("{0}")]
    Protocol(String),
}

/// A blocking API client. Cheap to clone; holds no connection between requests.
#[derive(Clone, Debug)]
pub struct Client {
    endpoint: Endpoint,
    requester: String,
    timeout: Duration,
}

impl Client {
    /// A client of `endpoint` that names itself `requester` (sent as `X-LB-Requester`; control
    /// characters are dropped) and gives each request at most `timeout` end to end.
    pub fn new(endpoint: Endpoint, requester: String, timeout: Duration) -> Self {
        let requester = requester.chars().filter(|c| !c.is_control()).collect::<String>();
        let timeout = timeout.max(Duration::from_millis(1));
        Client { endpoint, requester: requester.trim().to_owned(), timeout }
    }

    /// The endpoint this client talks to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// `GET path`, decoding the JSON response as `T`.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        decode(&self.request("GET", path, None)?)
    }

    /// `GET path`, returning the response body as text (e.g. `/metrics`, or JSON to print as
    /// is).
    pub fn get_text(&self, path: &str) -> Result<String, ClientError> {
        text(self.request("GET", path, None)?)
    }

    /// `POST path` with `body` as JSON, decoding the JSON response as `T`.
    pub fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        decode(&self.post_bytes(path, body)?)
    }

    /// `POST path` with `body` as JSON, returning the response body as text.
    pub fn post_text<B: Serialize>(&self, path: &str, body: &B) -> Result<String, ClientError> {
        text(self.post_bytes(path, body)?)
    }

    fn post_bytes<B: Serialize>(&self, path: &str, body: &B) -> Result<Vec<u8>, ClientError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| ClientError::Protocol(format!("cannot encode the request: {e}")))?;
        self.request("POST", path, Some(&body))
    }

    /// One exchange; the body of a 2xx response, or the error.
    fn request(&self, method: &str, path: &str, body: Option<&[u8]>) -> Result<Vec<u8>, ClientError> {
        if !path.starts_with('/') || !path.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ClientError::Protocol(format!("invalid request path {path:?}")));
        }
        let deadline = Instant::now() + self.timeout;
        let request = self.encode(method, path, body)?;
        let mut stream = self.connect(deadline)?;

        let sent = stream.set_write_timeout(remaining(deadline)).and_then(|()| stream.write_all(&request));
        let response = read_response(&mut stream, deadline, self.timeout);
        let (status, reason, body) = match (sent, response) {
            (_, Ok(r)) => r,
            // The daemon may answer early (e.g. 413) and close before taking the whole request:
            // its answer is more useful than the write error.
            (Err(e), Err(_)) if is_timeout(&e) => return Err(self.timed_out()),
            (Err(e), Err(_)) => {
                return Err(ClientError::Protocol(format!("sending the request to lb-daemon failed: {e}")));
            }
            (Ok(()), Err(e)) => return Err(e),
        };
        if (200..300).contains(&status) {
            return Ok(body);
        }
        match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(ErrorBody { error }) => {
                Err(ClientError::Api { status, error: ApiError::new(error.code, error.message) })
            }
            Err(_) => {
                let snippet = String::from_utf8_lossy(&body[..body.len().min(200)]).trim().to_owned();
                Err(ClientError::Protocol(format!("lb-daemon answered HTTP {status} {reason}: {snippet}")))
            }
        }
    }

    /// The request's bytes.
    fn encode(&self, method: &str, path: &str, body: Option<&[u8]>) -> Result<Vec<u8>, ClientError> {
        let host = match &self.endpoint {
            Endpoint::Unix(_) => "localhost",
            Endpoint::Tcp { addr, .. } => addr.as_str(),
        };
        if !host.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ClientError::Protocol(format!("invalid address {host:?}")));
        }
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lb-daemon-client/{}\r\n\
             Accept: application/json\r\nConnection: close\r\n",
            env!("CARGO_PKG_VERSION")
        );
        if !self.requester.is_empty() {
            head.push_str(&format!("X-LB-Requester: {}\r\n", self.requester));
        }
        if let Endpoint::Tcp { token, .. } = &self.endpoint
            && !token.is_empty()
        {
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ClientError::Protocol(
                    "the API token contains spaces, control or non-ASCII characters".into(),
                ));
            }
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        if let Some(body) = body {
            head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body.unwrap_or_default());
        Ok(bytes)
    }

    /// Connects before the deadline.
    fn connect(&self, deadline: Instant) -> Result<Stream, ClientError> {
        let unreachable =
            |source: io::Error| ClientError::Unreachable { endpoint: self.endpoint.to_string(), source };
        match &self.endpoint {
            Endpoint::Unix(path) => UnixStream::connect(path).map(Stream::Unix).map_err(unreachable),
            Endpoint::Tcp { addr, .. } => {
                let mut last = io::Error::new(io::ErrorKind::NotFound, "the name resolves to no address");
                for a in addr.to_socket_addrs().map_err(unreachable)? {
                    let Some(left) = remaining(deadline) else {
                        last = io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
                        break;
                    };
                    match TcpStream::connect_timeout(&a, left) {
                        Ok(s) => {
                            let _ = s.set_nodelay(true);
                            return Ok(Stream::Tcp(s));
                        }
                        Err(e) => last = e,
                    }
                }
                Err(unreachable(last))
            }
        }
    }

    fn timed_out(&self) -> ClientError {
        timed_out(self.timeout)
    }
}

/// A connected socket of either kind.
enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(t),
            Stream::Tcp(s) => s.set_read_timeout(t),
        }
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        let t = t.ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "deadline passed"))?;
        match self {
            Stream::Unix(s) => s.set_write_timeout(Some(t)),
            Stream::Tcp(s) => s.set_write_timeout(Some(t)),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Time left before `deadline`, None once it passed.
fn remaining(deadline: Instant) -> Option<Duration> {
    deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero())
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

fn timed_out(timeout: Duration) -> ClientError {
    ClientError::Protocol(format!(
        "lb-daemon did not answer within {} (see --timeout)",
        humantime::format_duration(timeout)
    ))
}

/// Reads more bytes into `buf`; Ok(0) at end of stream.
fn fill(
    stream: &mut Stream,
    buf: &mut Vec<u8>,
    deadline: Instant,
    timeout: Duration,
) -> Result<usize, ClientError> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let left = remaining(deadline).ok_or_else(|| timed_out(timeout))?;
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| ClientError::Protocol(format!("socket error: {e}")))?;
        match stream.read(&mut chunk) {
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if is_timeout(&e) => return Err(timed_out(timeout)),
            Err(e) => return Err(ClientError::Protocol(format!("reading the response failed: {e}"))),
        }
    }
}

/// Reads a whole response: status, reason and (de-chunked) body.
fn read_response(
    stream: &mut Stream,
    deadline: Instant,
    timeout: Duration,
) -> Result<(u16, String, Vec<u8>), ClientError> {
    let protocol = |m: &str| ClientError::Protocol(format!("malformed response from lb-daemon: {m}"));
    let mut buf = Vec::with_capacity(4096);
    let head_len = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(protocol("response head too large"));
        }
        if fill(stream, &mut buf, deadline, timeout)? == 0 {
            return Err(if buf.is_empty() {
                protocol("connection closed without a response")
            } else {
                protocol("connection closed in the response head")
            });
        }
    };
    let head =
        std::str::from_utf8(&buf[..head_len - 4]).map_err(|_| protocol("response head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let status = parts.next().unwrap_or_default();
    let reason = parts.next().unwrap_or_default().to_owned();
    if !version.starts_with("HTTP/1.") || status.len() != 3 {
        return Err(protocol(&format!("bad status line {status_line:?}")));
    }
    let status: u16 = status.parse().map_err(|_| protocol(&format!("bad status line {status_line:?}")))?;

    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    for line in lines {
        let (name, value) =
            line.split_once(':').ok_or_else(|| protocol(&format!("bad header line {line:?}")))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value.parse().map_err(|_| protocol("bad Content-Length"))?;
            if content_length.is_some_and(|m| m != n) {
                return Err(protocol("conflicting Content-Length headers"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().split(',').any(|v| v.trim() == "chunked");
        }
    }
    let mut body = buf.split_off(head_len);
    let too_large = || protocol(&format!("response body larger than {MAX_RESPONSE_BYTES} bytes"));
    match (chunked, content_length) {
        (false, Some(n)) => {
            if n > MAX_RESPONSE_BYTES {
                return Err(too_large());
            }
            body.reserve(n.saturating_sub(body.len()));
            while body.len() < n {
                if fill(stream, &mut body, deadline, timeout)? == 0 {
                    return Err(protocol(&format!("body truncated at {} of {n} bytes", body.len())));
                }
            }
            body.truncate(n);
        }
        _ => {
            // Chunked or unframed: Connection: close makes the end of stream the end.
            while fill(stream, &mut body, deadline, timeout)? != 0 {
                if body.len() > MAX_RESPONSE_BYTES + MAX_HEAD_BYTES {
                    return Err(too_large());
                }
            }
            if chunked {
                body = dechunk(&body).ok_or_else(|| protocol("bad chunked encoding"))?;
            }
        }
    }
    Ok((status, reason, body))
}

/// Decodes a complete chunked body (trailers ignored).
fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_field = std::str::from_utf8(&data[..line_end]).ok()?;
        let size_hex = size_field.split(';').next()?.trim();
        let size = usize::from_str_radix(size_hex, 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        if data.len() < size + 2 || &data[size..size + 2] != b"\r\n" {
            return None;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(body)
        .map_err(|e| ClientError::Protocol(format!("unexpected response from lb-daemon: {e}")))
}

fn text(body: Vec<u8>) -> Result<String, ClientError> {
    String::from_utf8(body).map_err(|_| ClientError::Protocol("response body is not UTF-8".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::model::ErrorCode;
    use std::os::unix::net::UnixListener;

    /// Serves one canned response on a Unix socket and returns what the client sent.
    fn canned(response: impl Into<Vec<u8>>) -> (tempfile::TempDir, PathBuf, std::thread::JoinHandle<String>) {
        let response = response.into();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let handle = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = Vec::new();
            let mut chunk = [0u8; 4096];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut chunk).unwrap();
                req.extend_from_slice(&chunk[..n]);
            }
            s.write_all(&response).unwrap();
            String::from_utf8(req).unwrap()
        });
        (dir, path, handle)
    }

    fn client(path: PathBuf) -> Client {
        Client::new(Endpoint::Unix(path), "me\r\nX-Evil: 1".into(), Duration::from_secs(5))
    }

    #[test]
    fn reads_content_length_body_and_sends_headers() {
        let (_d, path, h) = canned(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}",
        );
        let v: serde_json::Value = client(path).get("/v1/health").unwrap();
        assert_eq!(v, serde_json::json!({ "ok": true }));
        let req = h.join().unwrap();
        assert!(req.starts_with("GET /v1/health HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("\r\nConnection: close\r\n"));
        assert!(req.contains("\r\nX-LB-Requester: meX-Evil: 1\r\n"), "{req}");
    }

    #[test]
    fn reads_chunked_and_unframed_bodies() {
        let (_d, path, _h) = canned(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nlb_u\r\n4\r\np 1\n\r\n0\r\n\r\n",
        );
        assert_eq!(client(path).get_text("/metrics").unwrap(), "lb_up 1\n");
        let (_d, path, _h) = canned(b"HTTP/1.0 200 OK\r\n\r\nhello");
        assert_eq!(client(path).get_text("/metrics").unwrap(), "hello");
    }

    #[test]
    fn error_bodies_become_api_errors() {
        let body = r#"{"error":{"code":"conflict","message":"changed"}}"#;
        let (_d, path, _h) = canned(format!(
            "HTTP/1.1 412 Precondition Failed\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
        match client(path).get::<serde_json::Value>("/v1/status") {
            Err(ClientError::Api { status: 412, error }) => {
                assert_eq!(error, ApiError::new(ErrorCode::Conflict, "changed"));
            }
            other => panic!("{other:?}"),
        }
        let (_d, path, _h) = canned(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 4\r\n\r\noops");
        match client(path).get::<serde_json::Value>("/v1/status") {
            Err(ClientError::Protocol(m)) => assert!(m.contains("502") && m.contains("oops"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_and_truncated_responses_are_protocol_errors() {
        for response in [
            &b"garbage\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
        ] {
            let (_d, path, _h) = canned(response);
            let r = client(path).get::<serde_json::Value>("/v1/status");
            assert!(matches!(r, Err(ClientError::Protocol(_))), "{r:?}");
        }
    }

    #[test]
    fn missing_socket_is_unreachable_and_silence_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let c =
            Client::new(Endpoint::Unix(dir.path().join("none.sock")), String::new(), Duration::from_secs(1));
        match c.get::<serde_json::Value>("/v1/status") {
            Err(ClientError::Unreachable { endpoint, source }) => {
                assert!(endpoint.ends_with("none.sock"));
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("{other:?}"),
        }
        let path = dir.path().join("silent.sock");
        let _listener = UnixListener::bind(&path).unwrap();
        let c = Client::new(Endpoint::Unix(path), String::new(), Duration::from_millis(200));
        let started = Instant::now();
        match c.get::<serde_json::Value>("/v1/status") {
            Err(ClientError::Protocol(m)) => assert!(m.contains("did not answer"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn endpoint_debug_hides_the_token() {
        let e = Endpoint::Tcp { addr: "h:1".into(), token: "secret".into() };
        assert!(!format!("{e:?}").contains("secret"));
        assert_eq!(e.to_string(), "h:1");
        assert!(Client::new(e, String::new(), Duration::ZERO).get_text("no-slash").is_err());
    }

    #[test]
    fn dechunk_rejects_bad_input() {
        assert_eq!(dechunk(b"3\r\nabc\r\n0\r\n\r\n").as_deref(), Some(&b"abc"[..]));
        assert_eq!(dechunk(b"3\r\nabcd\r\n0\r\n\r\n"), None);
        assert_eq!(dechunk(b"zz\r\n"), None);
    }
}
