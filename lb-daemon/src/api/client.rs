//! A blocking client of the management API, over the Unix socket or over TCP with a bearer
//! token: what `lbctl` (and the tests) talk to the daemon with.
//!
//! HTTP/1.1 is hyper's. Each request runs on a current-thread tokio runtime built for it and
//! dropped after it, so the client stays a plain blocking value (no runtime, connection or
//! tokio type in its interface) that may be used from any thread that is not itself inside a
//! runtime. One request per connection; every request carries an `X-LB-Requester` header
//! naming who asks, for the switch history. The whole exchange (connect, send, receive)
//! shares one deadline.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::header::{ACCEPT, AUTHORIZATION, CONNECTION, CONTENT_TYPE, HOST, HeaderValue, USER_AGENT};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::api::model::{ApiError, ErrorBody};

/// Largest response body accepted (status with many backends or a long history are well
/// below this).
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;

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

/// Why a request failed. The caller decides from the variant (lbctl maps each to an exit
/// code): the daemon could not be reached, it refused, or the exchange broke.
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

/// A blocking API client. Cheap to clone; holds no connection (nor runtime) between requests.
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
        decode(&self.request(Method::GET, path, None)?)
    }

    /// `GET path`, returning the response body as text (e.g. `/metrics`, or JSON to print as
    /// is).
    pub fn get_text(&self, path: &str) -> Result<String, ClientError> {
        text(self.request(Method::GET, path, None)?)
    }

    /// `POST path` with `body` as JSON, decoding the JSON response as `T`.
    pub fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        decode(&self.post_bytes(path, body)?)
    }

    /// `POST path` with `body` as JSON, returning the response body as text.
    pub fn post_text<B: Serialize>(&self, path: &str, body: &B) -> Result<String, ClientError> {
        text(self.post_bytes(path, body)?)
    }

    /// `GET /v1/host` as text: the host's BGP announcements, maintenance state and flows left
    /// (decode as [`crate::fleet::host::HostView`]).
    pub fn host_text(&self) -> Result<String, ClientError> {
        self.get_text("/v1/host")
    }

    /// `POST /v1/host/drain` (`drain`) or `/v1/host/undrain` as text: the BGP view once BIRD
    /// confirmed (decode as [`crate::fleet::host::BgpView`]).
    pub fn host_drain_text(&self, drain: bool) -> Result<String, ClientError> {
        let verb = if drain { "drain" } else { "undrain" };
        self.post_text(&format!("/v1/host/{verb}"), &serde_json::json!({}))
    }

    /// `POST /v1/backend` (`/v1/services/{service}/backend` when a service is named): drains,
    /// disables, enables or re-weights one backend.
    pub fn backend(
        &self,
        service: Option<&str>,
        req: &super::model::BackendRequest,
    ) -> Result<super::model::BackendOutcome, ClientError> {
        let path = match service {
            Some(s) => format!("/v1/services/{s}/backend"),
            None => "/v1/backend".to_string(),
        };
        self.post(&path, req)
    }

    fn post_bytes<B: Serialize>(&self, path: &str, body: &B) -> Result<Bytes, ClientError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| ClientError::Protocol(format!("cannot encode the request: {e}")))?;
        self.request(Method::POST, path, Some(body))
    }

    /// One exchange; the body of a 2xx response, or the error.
    fn request(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<Bytes, ClientError> {
        let request = self.build(method, path, body)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| ClientError::Protocol(format!("cannot start the HTTP client: {e}")))?;
        let (status, reason, body) = runtime.block_on(self.exchange(request))?;
        if status.is_success() {
            return Ok(body);
        }
        match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(ErrorBody { error }) => Err(ClientError::Api {
                status: status.as_u16(),
                error: ApiError::new(error.code, error.message),
            }),
            Err(_) => {
                let snippet = String::from_utf8_lossy(&body[..body.len().min(200)]).trim().to_owned();
                Err(ClientError::Protocol(format!(
                    "lb-daemon answered HTTP {} {reason}: {snippet}",
                    status.as_u16()
                )))
            }
        }
    }

    /// The request with its headers; an invalid path, address or token is refused here.
    fn build(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Request<Full<Bytes>>, ClientError> {
        if !path.starts_with('/') || !path.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ClientError::Protocol(format!("invalid request path {path:?}")));
        }
        let host = match &self.endpoint {
            Endpoint::Unix(_) => "localhost",
            Endpoint::Tcp { addr, .. } => addr.as_str(),
        };
        let host = HeaderValue::from_str(host)
            .ok()
            .filter(|_| host.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| ClientError::Protocol(format!("invalid address {host:?}")))?;
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, host)
            .header(USER_AGENT, concat!("lb-daemon-client/", env!("CARGO_PKG_VERSION")))
            .header(ACCEPT, "application/json")
            .header(CONNECTION, "close");
        if !self.requester.is_empty() {
            // Control characters were dropped in `new`; what is left is visible text.
            let value = HeaderValue::from_str(&self.requester)
                .map_err(|_| ClientError::Protocol("the requester name is not a valid header".into()))?;
            builder = builder.header("x-lb-requester", value);
        }
        if let Endpoint::Tcp { token, .. } = &self.endpoint
            && !token.is_empty()
        {
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ClientError::Protocol(
                    "the API token contains spaces, control or non-ASCII characters".into(),
                ));
            }
            let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ClientError::Protocol("the API token is not a valid header".into()))?;
            value.set_sensitive(true);
            builder = builder.header(AUTHORIZATION, value);
        }
        if body.is_some() {
            builder = builder.header(CONTENT_TYPE, "application/json");
        }
        builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Protocol(format!("invalid request: {e}")))
    }

    /// Connects and exchanges `request` before the deadline: status, reason phrase and body.
    async fn exchange(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, String, Bytes), ClientError> {
        let deadline = Instant::now() + self.timeout;
        let unreachable =
            |source: io::Error| ClientError::Unreachable { endpoint: self.endpoint.to_string(), source };
        let connected = tokio::time::timeout_at(deadline, async {
            match &self.endpoint {
                Endpoint::Unix(path) => tokio::net::UnixStream::connect(path).await.map(Stream::Unix),
                Endpoint::Tcp { addr, .. } => {
                    let mut last = io::Error::new(io::ErrorKind::NotFound, "the name resolves to no address");
                    for a in tokio::net::lookup_host(addr.as_str()).await? {
                        match tokio::net::TcpStream::connect(a).await {
                            Ok(s) => {
                                let _ = s.set_nodelay(true);
                                return Ok(Stream::Tcp(s));
                            }
                            Err(e) => last = e,
                        }
                    }
                    Err(last)
                }
            }
        })
        .await;
        let stream = match connected {
            Ok(connected) => connected.map_err(unreachable)?,
            Err(_) => return Err(unreachable(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))),
        };
        let exchanged = match stream {
            Stream::Unix(s) => tokio::time::timeout_at(deadline, send(s, request)).await,
            Stream::Tcp(s) => tokio::time::timeout_at(deadline, send(s, request)).await,
        };
        exchanged.unwrap_or_else(|_| {
            Err(ClientError::Protocol(format!(
                "lb-daemon did not answer within {} (see --timeout)",
                humantime::format_duration(self.timeout)
            )))
        })
    }
}

/// A connected socket of either kind.
enum Stream {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

/// Sends `request` over a fresh connection and reads the whole response.
async fn send<S>(stream: S, request: Request<Full<Bytes>>) -> Result<(StatusCode, String, Bytes), ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ClientError::Protocol(format!("cannot talk HTTP to lb-daemon: {e}")))?;
    // The connection's I/O runs beside the request; it ends when the daemon closes it (or with
    // the runtime, which lives for this one exchange).
    tokio::spawn(connection);
    let response = sender.send_request(request).await.map_err(|e| {
        ClientError::Protocol(if e.is_parse() {
            format!("malformed response from lb-daemon: {e}")
        } else if e.is_incomplete_message() {
            "malformed response from lb-daemon: connection closed before a whole response".to_owned()
        } else {
            format!("the request to lb-daemon failed: {e}")
        })
    })?;
    let (parts, body) = response.into_parts();
    let reason = parts
        .extensions
        .get::<hyper::ext::ReasonPhrase>()
        .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
        .or_else(|| parts.status.canonical_reason().map(str::to_owned))
        .unwrap_or_default();
    let body = Limited::new(body, MAX_RESPONSE_BYTES).collect().await.map_err(|e| {
        ClientError::Protocol(if e.is::<http_body_util::LengthLimitError>() {
            format!("malformed response from lb-daemon: body larger than {MAX_RESPONSE_BYTES} bytes")
        } else {
            format!("malformed response from lb-daemon: {e}")
        })
    })?;
    Ok((parts.status, reason, body.to_bytes()))
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(body)
        .map_err(|e| ClientError::Protocol(format!("unexpected response from lb-daemon: {e}")))
}

fn text(body: Bytes) -> Result<String, ClientError> {
    String::from_utf8(body.into()).map_err(|_| ClientError::Protocol("response body is not UTF-8".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::model::ErrorCode;
    use std::io::{Read, Write};
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
        let req = h.join().unwrap().to_ascii_lowercase();
        assert!(req.starts_with("get /v1/health http/1.1\r\n"), "{req}");
        assert!(req.contains("\r\nconnection: close\r\n"), "{req}");
        assert!(req.contains("\r\nhost: localhost\r\n"), "{req}");
        // Control characters in the requester cannot inject a header.
        assert!(req.contains("\r\nx-lb-requester: mex-evil: 1\r\n"), "{req}");
    }

    #[test]
    fn sends_the_bearer_token_and_json_body_over_tcp() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let handle = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = Vec::new();
            let mut chunk = [0u8; 4096];
            while !req.ends_with(b"{\"detach\":false}") {
                let n = s.read(&mut chunk).unwrap();
                assert!(n > 0, "{}", String::from_utf8_lossy(&req));
                req.extend_from_slice(&chunk[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"ok\":true}").unwrap();
            String::from_utf8(req).unwrap()
        });
        let c = Client::new(
            Endpoint::Tcp { addr: addr.clone(), token: "s3cret".into() },
            "ci".into(),
            Duration::from_secs(5),
        );
        let v: serde_json::Value =
            c.post("/v1/shutdown", &crate::api::model::ShutdownRequest::default()).unwrap();
        assert_eq!(v["ok"], true);
        let req = handle.join().unwrap();
        assert!(req.starts_with("POST /v1/shutdown HTTP/1.1\r\n"), "{req}");
        let lower = req.to_ascii_lowercase();
        assert!(lower.contains("\r\nauthorization: bearer s3cret\r\n"), "{req}");
        assert!(lower.contains(&format!("\r\nhost: {addr}\r\n")), "{req}");
        assert!(lower.contains("\r\ncontent-type: application/json\r\n"), "{req}");
        assert!(lower.contains("\r\ncontent-length: 16\r\n"), "{req}");
        // A token that would break the header is refused before anything is sent.
        let bad =
            Client::new(Endpoint::Tcp { addr, token: "a b".into() }, String::new(), Duration::from_secs(1));
        assert!(matches!(bad.get_text("/v1/health"), Err(ClientError::Protocol(m)) if m.contains("token")));
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
            Err(ClientError::Protocol(m)) => {
                assert_eq!(m, "lb-daemon answered HTTP 502 Bad Gateway: oops");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_and_truncated_responses_are_protocol_errors() {
        for response in [
            &b"garbage\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
            b"",
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
        // Nobody listening on a TCP port: unreachable too.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let c = Client::new(
            Endpoint::Tcp { addr: format!("127.0.0.1:{port}"), token: "t".into() },
            String::new(),
            Duration::from_secs(1),
        );
        match c.get_text("/v1/status") {
            Err(ClientError::Unreachable { source, .. }) => {
                assert_eq!(source.kind(), io::ErrorKind::ConnectionRefused)
            }
            other => panic!("{other:?}"),
        }
        let path = dir.path().join("silent.sock");
        let _listener = UnixListener::bind(&path).unwrap();
        let c = Client::new(Endpoint::Unix(path), String::new(), Duration::from_millis(200));
        let started = std::time::Instant::now();
        match c.get::<serde_json::Value>("/v1/status") {
            Err(ClientError::Protocol(m)) => assert!(m.contains("did not answer within 200ms"), "{m}"),
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
}
