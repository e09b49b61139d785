//! The management API's HTTP/1.1 side: JSON over a Unix socket (mode 0600, no token: the file
//! mode is the access control) and optionally over TCP with a bearer token.
//!
//! Routing, body limits, authentication and error bodies live here; everything the daemon does
//! is behind [`Control`], whose synchronous methods run on tokio's blocking pool so a slow one
//! never stalls the reactor. Each connection gets its own task (HTTP/1.1 keep-alive); the
//! `shutdown` future passed to [`serve`] stops accepting, lets in-flight requests finish (for a
//! bounded time) and removes the socket file.
//!
//! Connections cannot starve the daemon of file descriptors ([`ApiLimits`]): each listener
//! serves at most `max_connections` at once (more are closed as soon as they are accepted, so
//! a flood of TCP connections never locks out the Unix socket); a TCP connection that has not
//! sent an authenticated request within `auth_deadline` is closed; a connection idle for
//! `idle_timeout` is closed; a request body that does not arrive within `body_timeout` gets 408
//! and the connection is closed. What was refused or closed is counted in `/metrics`.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{HeaderMap, Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use nix::sys::socket::{AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, listen, socket};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::sync::{Semaphore, mpsc, watch};

use super::Control;
use super::model::{
    ApiError, ErrorCode, HealthView, RollbackRequest, ShutdownRequest, SplitRequest, SwitchRequest,
};

/// Largest accepted request body; a bigger one gets 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// `limit` of `GET /v1/history` when the query leaves it out.
pub const DEFAULT_HISTORY_LIMIT: usize = 50;

/// Largest accepted `limit` of `GET /v1/history`.
pub const MAX_HISTORY_LIMIT: usize = 10_000;

/// Longest `X-LB-Requester` value kept (in characters); the rest is cut off.
pub const MAX_REQUESTER_CHARS: usize = 200;

/// The OpenAPI 3.0 document served at `GET /v1/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

/// Content type of `GET /metrics` (Prometheus text exposition format).
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Bounds on API connections, so that clients (idle, slow or hostile) cannot take the daemon's
/// file descriptors away from its health checks and the data plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiLimits {
    /// Connections served at once per listener (Unix and TCP each); more are closed at once.
    pub max_connections: usize,
    /// A TCP connection must send a request with the right token within this time.
    pub auth_deadline: Duration,
    /// A connection with no request in progress for this long is closed.
    pub idle_timeout: Duration,
    /// How long a client may take to send a request's headers.
    pub header_timeout: Duration,
    /// How long a client may take to send a request's body.
    pub body_timeout: Duration,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            auth_deadline: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
        }
    }
}

/// How long [`serve`] waits for in-flight requests once `shutdown` resolved.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the API listens.
#[derive(Clone)]
pub struct ServeOptions {
    /// Unix socket path (e.g. `/run/lb/lb.sock`). Its parent directory is created (0755) when
    /// missing, a stale socket there is replaced, and the new socket gets mode 0600.
    pub unix_socket: PathBuf,
    /// Optional TCP listener and the bearer token every TCP request must carry.
    pub tcp: Option<(SocketAddr, String)>,
    /// Bounds on connections.
    pub limits: ApiLimits,
    /// The BGP announcer (`[bgp]`), for the `/v1/host` endpoints and `bgp` in the status.
    pub fleet: Option<Arc<crate::fleet::Fleet>>,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token stays out of logs.
        f.debug_struct("ServeOptions")
            .field("unix_socket", &self.unix_socket)
            .field("tcp", &self.tcp.as_ref().map(|(addr, _)| (addr, "<token>")))
            .field("limits", &self.limits)
            .finish()
    }
}

/// Serves the API until `shutdown` resolves, then stops accepting, waits (up to a few seconds)
/// for requests in progress, removes the socket file and returns.
///
/// Fails before serving anything when a listener cannot be set up: the socket path is taken by
/// something that is not a socket, another process answers on it, or the TCP address is busy.
pub async fn serve(
    control: Arc<dyn Control>,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if let Some((_, token)) = &opts.tcp
        && token.trim().is_empty()
    {
        bail!("the TCP API needs a non-empty bearer token");
    }
    let unix = bind_unix(&opts.unix_socket)?;
    let tcp = match opts.tcp {
        Some((addr, token)) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for the TCP API"))?;
            tracing::info!(%addr, "management API listening on TCP (bearer token required)");
            Some((listener, token))
        }
        None => None,
    };
    serve_on(control, unix, tcp, opts.limits, opts.fleet, shutdown).await;
    Ok(())
}

/// A bound Unix listener and the identity of its socket file, so that only our own file is
/// removed on exit (not one a newer daemon put there meanwhile).
struct UnixSocket {
    listener: UnixListener,
    path: PathBuf,
    dev_ino: Option<(u64, u64)>,
}

impl Drop for UnixSocket {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .map(|m| m.file_type().is_socket() && Some((m.dev(), m.ino())) == self.dev_ino)
            .unwrap_or(false);
        if ours && let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), "cannot remove the API socket: {e}");
        }
    }
}

/// Prepares the directory, clears a stale socket and binds `path` with mode 0600.
fn bind_unix(path: &Path) -> anyhow::Result<UnixSocket> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!("another process is serving on {} (is another lb-daemon running?)", path.display());
            }
            std::fs::remove_file(path)
                .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
        }
        Ok(_) => bail!("{} exists and is not a socket; refusing to replace it", path.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    }
    let std_listener =
        bind_private_unix(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    let dev_ino = std::fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()));
    let socket = UnixSocket {
        listener: UnixListener::from_std(std_listener)
            .context("cannot register the API socket with the runtime")?,
        path: path.to_owned(),
        dev_ino,
    };
    tracing::info!(path = %path.display(), "management API listening on the Unix socket");
    Ok(socket)
}

/// `socket`, `bind`, `chmod 0600`, then `listen`: nobody can connect before the mode is set
/// (binding and listening in one step would leave a window with umask permissions, and Unix
/// clients need no token).
fn bind_private_unix(path: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    let invalid = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket path must be 1..{SUN_PATH_LEN} bytes without NUL"),
        )
    };
    if path.as_os_str().is_empty() {
        return Err(invalid());
    }
    // Rejects a NUL inside the path and a path that does not fit in `sun_path`.
    let addr = UnixAddr::new(path).map_err(|_| invalid())?;
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    bind(fd.as_raw_fd(), &addr)?;
    let finish = || -> io::Result<()> {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        listen(&fd, Backlog::new(128)?)?;
        Ok(())
    };
    if let Err(e) = finish() {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(std::os::unix::net::UnixListener::from(fd))
}

/// Size of `sockaddr_un.sun_path` on Linux (`UNIX_PATH_MAX`), NUL included.
const SUN_PATH_LEN: usize = 108;

/// Per-server state shared by every connection.
struct Shared {
    control: Arc<dyn Control>,
    /// Bearer token for TCP connections.
    token: Option<String>,
    limits: ApiLimits,
    /// Connection slots of the Unix listener, then of the TCP one.
    slots: [Arc<Semaphore>; 2],
    stats: ConnStats,
    /// The BGP announcer, when configured.
    fleet: Option<Arc<crate::fleet::Fleet>>,
}

/// What the connection bounds did, for `/metrics`.
#[derive(Default)]
struct ConnStats {
    /// Closed at once because the listener was full (Unix, TCP).
    refused: [AtomicU64; 2],
    /// TCP connections closed for sending no authenticated request in time.
    unauthenticated: AtomicU64,
    /// Connections closed after `idle_timeout` without a request.
    idle: AtomicU64,
    /// Requests whose body did not arrive in time.
    body_timeouts: AtomicU64,
    /// When a refusal was last logged (refusals are logged at most once a second).
    last_refusal_log: Mutex<Option<Instant>>,
}

const LISTENERS: [&str; 2] = ["unix", "tcp"];

impl Shared {
    /// Prometheus text of the connection bounds.
    fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let s = &self.stats;
        let _ = writeln!(out, "# HELP lb_api_connections API connections being served, by listener.");
        let _ = writeln!(out, "# TYPE lb_api_connections gauge");
        for (i, name) in LISTENERS.iter().enumerate() {
            let open = self.limits.max_connections.saturating_sub(self.slots[i].available_permits());
            let _ = writeln!(out, "lb_api_connections{{listener=\"{name}\"}} {open}");
        }
        let _ = writeln!(
            out,
            "# HELP lb_api_connections_closed_total API connections the daemon closed to protect itself, by listener and reason."
        );
        let _ = writeln!(out, "# TYPE lb_api_connections_closed_total counter");
        for (i, name) in LISTENERS.iter().enumerate() {
            let n = s.refused[i].load(Ordering::Relaxed);
            let _ =
                writeln!(out, "lb_api_connections_closed_total{{listener=\"{name}\",reason=\"limit\"}} {n}");
        }
        let n = s.unauthenticated.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "lb_api_connections_closed_total{{listener=\"tcp\",reason=\"unauthenticated\"}} {n}"
        );
        let n = s.idle.load(Ordering::Relaxed);
        let _ = writeln!(out, "lb_api_connections_closed_total{{listener=\"any\",reason=\"idle\"}} {n}");
        let n = s.body_timeouts.load(Ordering::Relaxed);
        let _ =
            writeln!(out, "lb_api_connections_closed_total{{listener=\"any\",reason=\"body_timeout\"}} {n}");
    }

    /// Logs a refused connection, at most once a second.
    fn log_refusal(&self, listener: usize) {
        let mut last = self.stats.last_refusal_log.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            *last = Some(Instant::now());
            tracing::warn!(
                listener = LISTENERS[listener],
                max = self.limits.max_connections,
                refused_total = self.stats.refused[listener].load(Ordering::Relaxed),
                "API connection refused: the listener serves {} connections already",
                self.limits.max_connections
            );
        }
    }
}

/// What a connection's watchdog needs to know about it.
struct ConnActivity {
    accepted: Instant,
    /// A request passed authentication (always true on the Unix socket).
    authenticated: AtomicBool,
    /// Requests being handled.
    busy: AtomicUsize,
    /// When the last request ended (or the connection was accepted).
    last: Mutex<Instant>,
}

impl ConnActivity {
    fn new(tcp: bool) -> Self {
        let now = Instant::now();
        Self {
            accepted: now,
            authenticated: AtomicBool::new(!tcp),
            busy: AtomicUsize::new(0),
            last: Mutex::new(now),
        }
    }
}

/// Resolves when the connection must be closed: unauthenticated past the deadline, or idle
/// (no request in progress) for `idle_timeout`. Returns why.
async fn watchdog(activity: Arc<ConnActivity>, limits: ApiLimits) -> &'static str {
    loop {
        let now = Instant::now();
        if !activity.authenticated.load(Ordering::Relaxed) {
            let deadline = activity.accepted + limits.auth_deadline;
            if now >= deadline {
                return "unauthenticated";
            }
            tokio::time::sleep_until(deadline.into()).await;
            continue;
        }
        let next = if activity.busy.load(Ordering::Relaxed) > 0 {
            now + limits.idle_timeout
        } else {
            let idle_until = *activity.last.lock().unwrap_or_else(|e| e.into_inner()) + limits.idle_timeout;
            if now >= idle_until {
                return "idle";
            }
            idle_until
        };
        tokio::time::sleep_until(next.into()).await;
    }
}

/// Who is on the other end of a connection.
#[derive(Clone)]
struct Peer {
    /// `uid=0 pid=4242` or `tcp:192.0.2.1:50000`.
    desc: Arc<str>,
    /// TCP connections must authenticate.
    tcp: bool,
}

/// The accept loops, then the drain. Listeners are already bound.
async fn serve_on(
    control: Arc<dyn Control>,
    unix: UnixSocket,
    tcp: Option<(TcpListener, String)>,
    limits: ApiLimits,
    fleet: Option<Arc<crate::fleet::Fleet>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let (tcp_listener, token) = match tcp {
        Some((l, t)) => (Some(l), Some(t)),
        None => (None, None),
    };
    let slots = || Arc::new(Semaphore::new(limits.max_connections));
    let shared = Arc::new(Shared {
        control,
        token,
        limits,
        slots: [slots(), slots()],
        stats: ConnStats::default(),
        fleet,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    // Every connection task holds a sender; `recv` returns None once all of them are gone.
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = unix.listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let desc = match stream.peer_cred() {
                        // tokio reads SO_PEERCRED (getsockopt) here.
                        Ok(cred) => match cred.pid() {
                            Some(pid) => format!("uid={} pid={pid}", cred.uid()),
                            None => format!("uid={}", cred.uid()),
                        },
                        Err(e) => format!("unix peer, credentials unknown: {e}"),
                    };
                    let peer = Peer { desc: desc.into(), tcp: false };
                    spawn_connection(stream, peer, &shared, &stop_rx, &alive_tx);
                }
                Err(e) => accept_failed("unix", e).await,
            },
            accepted = accept_tcp(tcp_listener.as_ref()) => match accepted {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let peer = Peer { desc: format!("tcp:{addr}").into(), tcp: true };
                    spawn_connection(stream, peer, &shared, &stop_rx, &alive_tx);
                }
                Err(e) => accept_failed("tcp", e).await,
            },
        }
    }
    drop(tcp_listener);
    let _ = stop_tx.send(true);
    drop(alive_tx);
    if tokio::time::timeout(DRAIN_TIMEOUT, alive_rx.recv()).await.is_err() {
        tracing::warn!("API connections still busy after {DRAIN_TIMEOUT:?}; closing anyway");
    }
    drop(unix); // removes the socket file
}

/// Accepts on the TCP listener, or waits forever when there is none.
async fn accept_tcp(listener: Option<&TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Logs a failed accept and backs off a little (e.g. out of file descriptors).
async fn accept_failed(kind: &str, e: io::Error) {
    tracing::warn!("API accept failed ({kind}): {e}");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Serves one connection on its own task until it closes, its watchdog closes it, or the
/// server drains. A listener already serving `max_connections` gets it closed at once.
fn spawn_connection<S>(
    io: S,
    peer: Peer,
    shared: &Arc<Shared>,
    stop: &watch::Receiver<bool>,
    alive: &mpsc::Sender<()>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let listener = usize::from(peer.tcp);
    let Ok(slot) = shared.slots[listener].clone().try_acquire_owned() else {
        shared.stats.refused[listener].fetch_add(1, Ordering::Relaxed);
        shared.log_refusal(listener);
        drop(io);
        return;
    };
    let shared = shared.clone();
    let mut stop = stop.clone();
    let alive = alive.clone();
    let activity = Arc::new(ConnActivity::new(peer.tcp));
    tokio::spawn(async move {
        let _alive = alive;
        let _slot = slot;
        let limits = shared.limits;
        let stats_owner = shared.clone();
        let service = {
            let activity = activity.clone();
            service_fn(move |req| {
                let shared = shared.clone();
                let peer = peer.clone();
                let activity = activity.clone();
                async move {
                    activity.busy.fetch_add(1, Ordering::Relaxed);
                    let resp = handle(&shared, &peer, &activity, req).await;
                    *activity.last.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
                    activity.busy.fetch_sub(1, Ordering::Relaxed);
                    Ok::<_, Infallible>(resp)
                }
            })
        };
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .keep_alive(true)
            .serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            why = watchdog(activity, limits) => {
                let counter = if why == "idle" { &stats_owner.stats.idle } else { &stats_owner.stats.unauthenticated };
                counter.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(reason = why, "API connection closed by its watchdog");
                Ok(())
            }
            () = async { let _ = stop.wait_for(|stopping| *stopping).await; } => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            tracing::debug!("API connection ended with an error: {e}");
        }
    });
}

/// The API's routes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Health,
    Status,
    Services,
    Service(String),
    Switch(Option<String>),
    Rollback(Option<String>),
    Split(Option<String>),
    Drain(Option<String>),
    Watch(Option<String>),
    History,
    Reload,
    Shutdown,
    OpenApi,
    Metrics,
}

impl Route {
    /// The route of a path, or None when no route has that path.
    fn parse(path: &str) -> Option<Route> {
        if path == "/metrics" {
            return Some(Route::Metrics);
        }
        let rest = path.strip_prefix("/v1/")?;
        let segments: Vec<&str> = rest.split('/').collect();
        let name = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        Some(match segments.as_slice() {
            ["health"] => Route::Health,
            ["status"] => Route::Status,
            ["services"] => Route::Services,
            ["services", n] => Route::Service(name(n)?),
            ["services", n, "switch"] => Route::Switch(Some(name(n)?)),
            ["services", n, "rollback"] => Route::Rollback(Some(name(n)?)),
            ["services", n, "split"] => Route::Split(Some(name(n)?)),
            ["services", n, "drain"] => Route::Drain(Some(name(n)?)),
            ["services", n, "watch"] => Route::Watch(Some(name(n)?)),
            ["drain"] => Route::Drain(None),
            ["watch"] => Route::Watch(None),
            ["switch"] => Route::Switch(None),
            ["rollback"] => Route::Rollback(None),
            ["split"] => Route::Split(None),
            ["history"] => Route::History,
            ["reload"] => Route::Reload,
            ["shutdown"] => Route::Shutdown,
            ["openapi.json"] => Route::OpenApi,
            _ => return None,
        })
    }

    /// The one method the route answers.
    fn method(&self) -> Method {
        match self {
            Route::Switch(_) | Route::Rollback(_) | Route::Split(_) | Route::Reload | Route::Shutdown => {
                Method::POST
            }
            _ => Method::GET,
        }
    }

    /// The service named in the path, checked.
    fn service(&self) -> Result<Option<&str>, ApiError> {
        let name = match self {
            Route::Service(n) => n,
            Route::Switch(Some(n))
            | Route::Rollback(Some(n))
            | Route::Split(Some(n))
            | Route::Drain(Some(n))
            | Route::Watch(Some(n)) => n,
            _ => return Ok(None),
        };
        check_service_name(name).map(Some)
    }
}

/// Service names are `[a-z0-9._-]` (upper case is let through for the daemon to judge); a `%`
/// (percent-encoding) or anything else cannot name a service.
fn check_service_name(name: &str) -> Result<&str, ApiError> {
    if name.contains('%') {
        return Err(ApiError::invalid(format!(
            "percent-encoded service name {name:?}: service names are [a-z0-9._-] and need no encoding"
        )));
    }
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        return Err(ApiError::invalid(format!(
            "invalid service name {name:?}: service names are [a-z0-9._-]"
        )));
    }
    Ok(name)
}

/// One request, start to finish. Never fails: errors become JSON error responses.
async fn handle(
    shared: &Shared,
    peer: &Peer,
    activity: &ConnActivity,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let response = match route_and_dispatch(shared, peer, activity, req).await {
        Ok(resp) => resp,
        Err(Failure { status, error }) => error_response(status, &error),
    };
    let status = response.status();
    if status.is_server_error() {
        tracing::warn!(%method, %path, status = status.as_u16(), peer = %peer.desc, "API request failed");
    } else {
        tracing::debug!(%method, %path, status = status.as_u16(), peer = %peer.desc, "API request");
    }
    response
}

/// An error response: the error and its HTTP status (usually `error.code.http_status()`).
struct Failure {
    status: u16,
    error: ApiError,
}

impl From<ApiError> for Failure {
    fn from(error: ApiError) -> Self {
        Failure { status: error.code.http_status(), error }
    }
}

/// Authenticates, routes and runs a request.
async fn route_and_dispatch(
    shared: &Shared,
    peer: &Peer,
    activity: &ConnActivity,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Failure> {
    if peer.tcp {
        let expected = shared.token.as_deref().unwrap_or_default();
        if !bearer_matches(req.headers(), expected) {
            return Err(ApiError::new(
                ErrorCode::Unauthorized,
                "missing or wrong bearer token (send `Authorization: Bearer <token>`)",
            )
            .into());
        }
        activity.authenticated.store(true, Ordering::Relaxed);
    }
    let body_timeout = (shared.limits.body_timeout, &shared.stats.body_timeouts);
    let path = req.uri().path();
    let who = requester(req.headers(), &peer.desc);
    if let Some(answer) = crate::fleet::api::route(shared.fleet.as_ref(), req.method(), path, &who).await {
        return Ok(json_response(&answer?));
    }
    let route = Route::parse(path).ok_or_else(|| ApiError::not_found(format!("no such path: {path}")))?;
    let allowed = route.method();
    if req.method() != allowed {
        let error =
            ApiError::invalid(format!("method {} not allowed on {path}; use {allowed}", req.method()));
        let mut resp = error_response(405, &error);
        let allow = if allowed == Method::POST { "POST" } else { "GET" };
        resp.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static(allow));
        return Ok(resp);
    }
    let service = route.service()?.map(str::to_owned);
    let requester = requester(req.headers(), &peer.desc);
    let control = shared.control.clone();

    let resp = match route {
        Route::Health => {
            let health = call(&control, |c| c.status().map(|s| HealthView::of(&s))).await?;
            let mut resp = json_response(&health);
            if !health.ok {
                *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            resp
        }
        Route::Status => {
            let status = call(&control, |c| c.status()).await?;
            json_response(&crate::fleet::api::status_with_bgp(status, shared.fleet.as_ref()))
        }
        Route::Services => json_response(&call(&control, |c| c.status().map(|s| s.services)).await?),
        Route::Service(_) => json_response(&call(&control, move |c| c.service(service.as_deref())).await?),
        Route::Switch(_) => {
            let body: SwitchRequest = read_json(req, false, body_timeout).await?;
            let out = call(&control, move |c| c.switch(service.as_deref(), &body, &requester)).await?;
            json_response(&out)
        }
        Route::Rollback(_) => {
            let body: RollbackRequest = read_json(req, true, body_timeout).await?;
            let out = call(&control, move |c| c.rollback(service.as_deref(), &body, &requester)).await?;
            json_response(&out)
        }
        Route::Split(_) => {
            let body: SplitRequest = read_json(req, false, body_timeout).await?;
            let out = call(&control, move |c| c.split(service.as_deref(), &body, &requester)).await?;
            json_response(&out)
        }
        Route::Drain(_) => json_response(&call(&control, move |c| c.drain(service.as_deref())).await?),
        Route::Watch(_) => json_response(&call(&control, move |c| c.watch(service.as_deref())).await?),
        Route::History => {
            let (service, limit) = history_query(req.uri().query())?;
            let entries = call(&control, move |c| c.history(service.as_deref(), limit)).await?;
            json_response(&entries)
        }
        Route::Reload => {
            let _: NoFields = read_json(req, true, body_timeout).await?;
            json_response(&call(&control, move |c| c.reload(&requester)).await?)
        }
        Route::Shutdown => {
            let body: ShutdownRequest = read_json(req, true, body_timeout).await?;
            call(&control, move |c| c.shutdown(&body, &requester)).await?;
            json_response(&serde_json::json!({ "ok": true }))
        }
        Route::OpenApi => response(200, "application/json", Bytes::from_static(OPENAPI_JSON.as_bytes())),
        Route::Metrics => {
            let mut text = call(&control, |c| c.metrics()).await?;
            shared.render_metrics(&mut text);
            response(200, METRICS_CONTENT_TYPE, Bytes::from(text))
        }
    };
    Ok(resp)
}

/// Body of `POST /v1/reload`: nothing (or `{}`).
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NoFields {}

/// Runs a `Control` call on the blocking pool.
async fn call<T, F>(control: &Arc<dyn Control>, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&dyn Control) -> Result<T, ApiError> + Send + 'static,
{
    let control = control.clone();
    tokio::task::spawn_blocking(move || f(&*control))
        .await
        .map_err(|e| ApiError::internal(format!("request handler failed: {e}")))?
}

/// Reads a JSON body of at most [`MAX_BODY_BYTES`]. An empty body means `T::default()` when
/// `empty_ok`, else it is an error.
///
/// A body that has not fully arrived within `timeout.0` gets 408 (counted in `timeout.1`) and
/// the connection is closed.
async fn read_json<T: DeserializeOwned + Default>(
    req: Request<Incoming>,
    empty_ok: bool,
    timeout: (Duration, &AtomicU64),
) -> Result<T, Failure> {
    let too_large = || Failure {
        status: 413,
        error: ApiError::invalid(format!("request body larger than {MAX_BODY_BYTES} bytes")),
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let collected = tokio::time::timeout(timeout.0, Limited::new(req.into_body(), MAX_BODY_BYTES).collect());
    let body = match collected.await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large()),
        Ok(Err(e)) => return Err(ApiError::invalid(format!("cannot read the request body: {e}")).into()),
        Err(_) => {
            timeout.1.fetch_add(1, Ordering::Relaxed);
            return Err(Failure {
                status: 408,
                error: ApiError::invalid(format!(
                    "request body not received within {}",
                    humantime::format_duration(timeout.0)
                )),
            });
        }
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        return if empty_ok {
            Ok(T::default())
        } else {
            Err(ApiError::invalid("this request needs a JSON body").into())
        };
    }
    serde_json::from_slice(&body).map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")).into())
}

/// `service` and `limit` of `GET /v1/history`.
fn history_query(query: Option<&str>) -> Result<(Option<String>, usize), ApiError> {
    let mut service = None;
    let mut limit = DEFAULT_HISTORY_LIMIT;
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "service" if value.is_empty() => service = None,
            "service" => service = Some(check_service_name(value)?.to_owned()),
            "limit" => {
                limit =
                    value.parse::<usize>().ok().filter(|n| (1..=MAX_HISTORY_LIMIT).contains(n)).ok_or_else(
                        || {
                            ApiError::invalid(format!(
                                "bad limit {value:?}: expected a whole number from 1 to {MAX_HISTORY_LIMIT}"
                            ))
                        },
                    )?;
            }
            other => {
                return Err(ApiError::invalid(format!(
                    "unknown query parameter {other:?} (expected service, limit)"
                )));
            }
        }
    }
    Ok((service, limit))
}

/// Whether the `Authorization` header carries `Bearer <expected>`.
fn bearer_matches(headers: &HeaderMap, expected: &str) -> bool {
    if expected.is_empty() {
        return false;
    }
    let Some(value) = headers.get(header::AUTHORIZATION) else { return false };
    let value = value.as_bytes();
    let Some((scheme, token)) = value.split_at_checked(7) else { return false };
    scheme.eq_ignore_ascii_case(b"bearer ") && constant_time_eq(token.trim_ascii(), expected.as_bytes())
}

/// Compares without an early exit, so the time taken says nothing about where the first
/// difference is (only, at most, about the length).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u64;
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= u64::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

/// The history's "who asked": the client's `X-LB-Requester` (cleaned up) and the peer.
fn requester(headers: &HeaderMap, peer: &str) -> String {
    let claimed: String = headers
        .get("x-lb-requester")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    let claimed: String = claimed.trim().chars().take(MAX_REQUESTER_CHARS).collect();
    let claimed = claimed.trim_end();
    if claimed.is_empty() { format!("({peer})") } else { format!("{claimed} ({peer})") }
}

/// 200 with a JSON body.
fn json_response<T: Serialize>(value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec(value) {
        Ok(mut body) => {
            body.push(b'\n');
            response(200, "application/json", Bytes::from(body))
        }
        Err(e) => error_response(500, &ApiError::internal(format!("cannot encode the response: {e}"))),
    }
}

/// An `ApiError::body()` JSON response.
fn error_response(status: u16, error: &ApiError) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec(&error.body())
        .unwrap_or_else(|_| br#"{"error":{"code":"internal","message":"cannot encode the error"}}"#.to_vec());
    body.push(b'\n');
    let mut resp = response(status, "application/json", Bytes::from(body));
    if status == 401 {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    }
    if status == 413 || status == 408 {
        // The unread rest of the body makes the connection unusable.
        resp.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    }
    resp
}

/// A response with a body and content type.
fn response(status: u16, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    resp.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::client::{Client, ClientError, Endpoint};
    use crate::api::model::*;
    use std::io::{Read, Write};
    use std::sync::Mutex;

    /// A `Control` with one service `web` and pools `pool-a` (active) and `pool-b`.
    #[derive(Default)]
    struct Fake {
        active: Mutex<Option<String>>,
        requesters: Mutex<Vec<String>>,
        /// The watch started by the last switch with `watch_s`.
        watch: Mutex<Option<WatchView>>,
    }

    impl Fake {
        fn service_view(&self) -> ServiceView {
            let active = self.active.lock().unwrap().clone().unwrap_or_else(|| "pool-a".into());
            ServiceView {
                name: "web".into(),
                mode: "nat".into(),
                vips: vec!["192.0.2.1:80".into()],
                active: Active::Pool(active.clone()),
                previous: None,
                epoch: 1,
                pools: ["pool-a", "pool-b"]
                    .iter()
                    .map(|p| PoolView {
                        name: (*p).into(),
                        share: if *p == active { 100 } else { 0 },
                        min_healthy: 1,
                        healthy: 1,
                        backends: vec![BackendView {
                            addr: "10.0.0.1:8080".into(),
                            weight: 1,
                            index: 0,
                            up: true,
                            last_error: None,
                            traffic: Traffic::default(),
                        }],
                        traffic: Traffic::default(),
                    })
                    .collect(),
                watch: self.watch.lock().unwrap().clone(),
            }
        }

        fn check(&self, service: Option<&str>) -> Result<(), ApiError> {
            match service {
                None | Some("web") => Ok(()),
                Some(other) => Err(ApiError::not_found(format!("no service named {other}"))),
            }
        }
    }

    impl Control for Fake {
        fn status(&self) -> Result<StatusView, ApiError> {
            Ok(StatusView {
                instance: "test".into(),
                version: "0.1.0".into(),
                uptime_s: 7,
                adopted: false,
                interfaces: vec![InterfaceView {
                    name: "eth0".into(),
                    mode: "native".into(),
                    attached: true,
                    ..Default::default()
                }],
                services: vec![self.service_view()],
                reasons: vec![("pass_not_vip".into(), 3)],
                warnings: vec![],
            })
        }
        fn service(&self, name: Option<&str>) -> Result<ServiceView, ApiError> {
            self.check(name)?;
            Ok(self.service_view())
        }
        fn switch(
            &self,
            service: Option<&str>,
            req: &SwitchRequest,
            requester: &str,
        ) -> Result<SwitchOutcome, ApiError> {
            self.check(service)?;
            if req.pool != "pool-a" && req.pool != "pool-b" {
                return Err(ApiError::not_found(format!("no pool named {}", req.pool)));
            }
            self.requesters.lock().unwrap().push(requester.to_owned());
            let before = self.service_view().active;
            *self.active.lock().unwrap() = Some(req.pool.clone());
            let after = Active::Pool(req.pool.clone());
            let watch = req.watch_s.map(|secs| WatchView {
                service: "web".into(),
                pool: req.pool.clone(),
                until: "2024-01-01T00:01:00Z".into(),
                remaining_s: secs,
                state: WatchState::Watching,
                reason: None,
                switch_history_id: Some(1),
                rollback_history_id: None,
            });
            if watch.is_some() {
                *self.watch.lock().unwrap() = watch.clone();
            }
            Ok(SwitchOutcome {
                service: "web".into(),
                changed: before != after,
                before,
                after,
                mode: if req.hard { SwitchMode::Hard } else { SwitchMode::Drain },
                epoch: 1,
                apply_us: 84,
                history_id: Some(1),
                dry_run: req.dry_run,
                warnings: vec![],
                watch,
            })
        }
        fn rollback(
            &self,
            service: Option<&str>,
            req: &RollbackRequest,
            requester: &str,
        ) -> Result<SwitchOutcome, ApiError> {
            self.switch(
                service,
                &SwitchRequest { pool: "pool-a".into(), hard: req.hard, ..Default::default() },
                requester,
            )
        }
        fn split(
            &self,
            service: Option<&str>,
            _req: &SplitRequest,
            _requester: &str,
        ) -> Result<SwitchOutcome, ApiError> {
            self.check(service)?;
            Err(ApiError::refused("splits are not supported by the fake"))
        }
        fn history(&self, service: Option<&str>, limit: usize) -> Result<Vec<HistoryEntry>, ApiError> {
            self.check(service)?;
            Ok((0..limit.min(3) as u64)
                .map(|id| HistoryEntry {
                    id,
                    time: "2024-01-01T00:00:00Z".into(),
                    service: "web".into(),
                    kind: HistoryKind::Switch,
                    from: Active::Pool("pool-a".into()),
                    to: Active::Pool("pool-b".into()),
                    mode: SwitchMode::Drain,
                    requester: "test".into(),
                    reason: None,
                })
                .collect())
        }
        fn reload(&self, _requester: &str) -> Result<ReloadOutcome, ApiError> {
            Ok(ReloadOutcome { changed: false, changes: vec![] })
        }
        fn shutdown(&self, _req: &ShutdownRequest, _requester: &str) -> Result<(), ApiError> {
            Ok(())
        }
        fn metrics(&self) -> Result<String, ApiError> {
            Ok("lb_up 1\n".into())
        }
        fn drain(&self, service: Option<&str>) -> Result<DrainView, ApiError> {
            self.check(service)?;
            let view = self.service_view();
            Ok(DrainView {
                service: "web".into(),
                idle_timeout_s: 120,
                pools: view
                    .pools
                    .iter()
                    .map(|p| PoolDrain {
                        pool: p.name.clone(),
                        share: p.share,
                        established: if p.share == 0 { 3 } else { 0 },
                        closing: 1,
                    })
                    .collect(),
                flows_scanned: 8,
            })
        }
        fn watch(&self, service: Option<&str>) -> Result<Option<WatchView>, ApiError> {
            self.check(service)?;
            Ok(self.watch.lock().unwrap().clone())
        }
    }

    /// A running server on a socket in a temp dir (and optionally TCP).
    struct TestServer {
        _dir: tempfile::TempDir,
        socket: PathBuf,
        fake: Arc<Fake>,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
        tcp_addr: Option<SocketAddr>,
    }

    const TOKEN: &str = "s3cret-token";

    impl TestServer {
        async fn start(with_tcp: bool) -> TestServer {
            Self::start_with(with_tcp, ApiLimits::default()).await
        }

        async fn start_with(with_tcp: bool, limits: ApiLimits) -> TestServer {
            let dir = tempfile::tempdir().unwrap();
            // A missing parent directory gets created.
            let socket = dir.path().join("run").join("lb.sock");
            let fake = Arc::new(Fake::default());
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let shutdown = async move {
                let _ = stopped.await;
            };
            let control: Arc<dyn Control> = fake.clone();
            let (task, tcp_addr) = if with_tcp {
                // Pre-bound on port 0 so the test knows the port without racing for one.
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                let unix = bind_unix(&socket).unwrap();
                let task = tokio::spawn(async move {
                    serve_on(control, unix, Some((listener, TOKEN.to_owned())), limits, None, shutdown).await;
                    Ok(())
                });
                (task, Some(addr))
            } else {
                let opts = ServeOptions { unix_socket: socket.clone(), tcp: None, limits, fleet: None };
                let task = tokio::spawn(serve(control, opts, shutdown));
                for _ in 0..200 {
                    if socket.exists() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                (task, None)
            };
            TestServer { _dir: dir, socket, fake, stop: Some(stop), task: Some(task), tcp_addr }
        }

        fn client(&self) -> Client {
            Client::new(
                Endpoint::Unix(self.socket.clone()),
                "test-suite user=alice".into(),
                Duration::from_secs(5),
            )
        }

        async fn stop(mut self) {
            self.stop.take().unwrap().send(()).unwrap();
            self.task.take().unwrap().await.unwrap().unwrap();
            assert!(!self.socket.exists(), "socket file removed on exit");
        }
    }

    /// Runs blocking client code off the runtime's worker threads.
    async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
        tokio::task::spawn_blocking(f).await.unwrap()
    }

    /// Sends raw bytes over the Unix socket and returns the whole response.
    fn raw_request(socket: &Path, request: &str) -> String {
        let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    fn api_error(r: Result<serde_json::Value, ClientError>) -> (u16, ApiError) {
        match r {
            Err(ClientError::Api { status, error }) => (status, error),
            other => panic!("expected an API error, got {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn status_round_trip_and_socket_mode() {
        let server = TestServer::start(false).await;
        let mode = std::fs::metadata(&server.socket).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let client = server.client();
        let (status, health, services, service) = blocking(move || {
            (
                client.get::<StatusView>("/v1/status").unwrap(),
                client.get::<serde_json::Value>("/v1/health").unwrap(),
                client.get::<Vec<ServiceView>>("/v1/services").unwrap(),
                client.get::<ServiceView>("/v1/services/web").unwrap(),
            )
        })
        .await;
        assert_eq!(status, server.fake.status().unwrap());
        assert_eq!(health["ok"], true);
        assert_eq!(health["problems"], serde_json::json!([]));
        assert_eq!(services, status.services);
        assert_eq!(service, status.services[0]);
        server.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn switch_succeeds_and_records_requester() {
        let server = TestServer::start(false).await;
        let client = server.client();
        let (named, unnamed) = blocking(move || {
            let req = SwitchRequest { pool: "pool-b".into(), ..Default::default() };
            let named: SwitchOutcome = client.post("/v1/services/web/switch", &req).unwrap();
            let unnamed: SwitchOutcome = client.post("/v1/switch", &req).unwrap();
            (named, unnamed)
        })
        .await;
        assert!(named.changed);
        assert_eq!(named.before, Active::Pool("pool-a".into()));
        assert_eq!(named.after, Active::Pool("pool-b".into()));
        assert_eq!(named.apply_us, 84);
        assert!(!unnamed.changed);
        let requesters = server.fake.requesters.lock().unwrap().clone();
        assert_eq!(requesters.len(), 2);
        for r in &requesters {
            assert!(r.starts_with("test-suite user=alice ("), "{r}");
            assert!(r.contains("uid="), "{r}");
            assert!(r.contains(&format!("pid={}", std::process::id())), "{r}");
        }
        server.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drain_and_watch_routes_answer() {
        let server = TestServer::start(false).await;
        let client = server.client();
        let (drain_named, drain_only, no_watch, switched, watch_named, watch_only, errors) =
            blocking(move || {
                let drain_named: DrainView = client.get("/v1/services/web/drain").unwrap();
                let drain_only: DrainView = client.get("/v1/drain").unwrap();
                // JSON null while no switch was watched.
                let no_watch = client.get_text("/v1/services/web/watch").unwrap();
                let req = SwitchRequest { pool: "pool-b".into(), watch_s: Some(60), ..Default::default() };
                let switched: SwitchOutcome = client.post("/v1/switch", &req).unwrap();
                let watch_named: Option<WatchView> = client.get("/v1/services/web/watch").unwrap();
                let watch_only: Option<WatchView> = client.get("/v1/watch").unwrap();
                let errors: Vec<Result<serde_json::Value, ClientError>> = vec![
                    client.get("/v1/services/nope/drain"),
                    client.get("/v1/services/nope/watch"),
                    client.post("/v1/drain", &serde_json::json!({})),
                    client.post("/v1/services/web/watch", &serde_json::json!({})),
                    client.get("/v1/services/we%62/watch"),
                ];
                (drain_named, drain_only, no_watch, switched, watch_named, watch_only, errors)
            })
            .await;
        assert_eq!(drain_named, drain_only);
        assert_eq!(drain_named.service, "web");
        let pools: Vec<(&str, u32, u64)> =
            drain_named.pools.iter().map(|p| (p.pool.as_str(), p.share, p.established)).collect();
        assert_eq!(pools, [("pool-a", 100, 0), ("pool-b", 0, 3)]);
        assert_eq!(no_watch.trim(), "null");
        let watch = switched.watch.expect("the outcome carries the watch it started");
        assert_eq!((watch.pool.as_str(), watch.state), ("pool-b", WatchState::Watching));
        assert_eq!(watch_named.as_ref(), Some(&watch));
        assert_eq!(watch_only, watch_named);
        let errors: Vec<(u16, ApiError)> = errors.into_iter().map(api_error).collect();
        assert_eq!((errors[0].0, errors[0].1.code), (404, ErrorCode::NotFound));
        assert_eq!((errors[1].0, errors[1].1.code), (404, ErrorCode::NotFound));
        assert_eq!(errors[2].0, 405);
        assert_eq!(errors[3].0, 405);
        assert_eq!((errors[4].0, errors[4].1.code), (400, ErrorCode::InvalidRequest));
        server.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_requests_get_json_errors() {
        let server = TestServer::start(false).await;
        let client = server.client();
        let results = blocking(move || {
            vec![
                client.post("/v1/services/web/switch", &serde_json::json!({ "pool": "pool-b", "bogus": 1 })),
                client.post("/v1/switch", &serde_json::json!({ "hard": true })),
                client.get("/v1/services/nope"),
                client.post(
                    "/v1/services/web/switch",
                    &SwitchRequest { pool: "pool-z".into(), ..Default::default() },
                ),
                client.get("/v1/switch"),
                client.get("/v1/nothing-here"),
                client.get("/v2/status"),
                client
                    .post("/v1/switch", &SwitchRequest { pool: "x".repeat(70 * 1024), ..Default::default() }),
                client.get("/v1/history?limit=0"),
                client.get("/v1/history?limit=10001"),
                client.get("/v1/history?limit=ten"),
                client.get("/v1/services/we%62"),
                client.post("/v1/services/web/split", &SplitRequest::default()),
            ]
        })
        .await;
        let errors: Vec<(u16, ApiError)> = results.into_iter().map(api_error).collect();

        let (status, e) = &errors[0];
        assert_eq!((*status, e.code), (400, ErrorCode::InvalidRequest));
        assert!(e.message.contains("unknown field `bogus`"), "{}", e.message);
        let (status, e) = &errors[1];
        assert_eq!((*status, e.code), (400, ErrorCode::InvalidRequest));
        assert!(e.message.contains("missing field `pool`"), "{}", e.message);
        assert_eq!((errors[2].0, errors[2].1.code), (404, ErrorCode::NotFound));
        assert_eq!(errors[2].1.message, "no service named nope");
        assert_eq!((errors[3].0, errors[3].1.code), (404, ErrorCode::NotFound));
        assert_eq!(errors[4].0, 405);
        assert_eq!((errors[5].0, errors[5].1.code), (404, ErrorCode::NotFound));
        assert_eq!(errors[6].0, 404);
        assert_eq!(errors[7].0, 413);
        for (status, e) in &errors[8..12] {
            assert_eq!((*status, e.code), (400, ErrorCode::InvalidRequest), "{}", e.message);
        }
        assert_eq!((errors[12].0, errors[12].1.code), (409, ErrorCode::Refused));
        server.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wrong_method_says_allow_and_bodies_default() {
        let server = TestServer::start(false).await;
        let socket = server.socket.clone();
        let client = server.client();
        let (resp, resp_413, rollback, history, metrics, shutdown) = blocking(move || {
            let resp = raw_request(&socket, "DELETE /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let resp_413 = raw_request(
                &socket,
                "POST /v1/switch HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n",
            );
            // An empty body means defaults for rollback.
            let rollback = raw_request(
                &socket,
                "POST /v1/services/web/rollback HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            let history: Vec<HistoryEntry> = client.get("/v1/history?service=web&limit=2").unwrap();
            let metrics = client.get_text("/metrics").unwrap();
            let shutdown: serde_json::Value = client.post("/v1/shutdown", &ShutdownRequest { detach: false }).unwrap();
            (resp, resp_413, rollback, history, metrics, shutdown)
        })
        .await;
        let lower = resp.to_ascii_lowercase();
        assert!(lower.starts_with("http/1.1 405"), "{resp}");
        assert!(lower.contains("\r\nallow: get\r\n"), "{resp}");
        assert!(lower.contains("content-type: application/json"), "{resp}");
        assert!(resp.contains(r#""code":"invalid_request""#), "{resp}");
        assert!(resp_413.starts_with("HTTP/1.1 413"), "{resp_413}");
        assert!(rollback.starts_with("HTTP/1.1 200"), "{rollback}");
        assert_eq!(history.len(), 2);
        assert!(metrics.starts_with("lb_up 1\n"), "{metrics}");
        assert!(metrics.contains("lb_api_connections{listener=\"unix\"} 1"), "{metrics}");
        assert_eq!(shutdown, serde_json::json!({ "ok": true }));
        server.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tcp_needs_the_bearer_token() {
        let server = TestServer::start(true).await;
        let addr = server.tcp_addr.unwrap().to_string();
        let (no_token, wrong, right, unix_still_open) = blocking({
            let addr = addr.clone();
            let unix = server.client();
            move || {
                let with = |token: &str| {
                    Client::new(
                        Endpoint::Tcp { addr: addr.clone(), token: token.into() },
                        "t".into(),
                        Duration::from_secs(5),
                    )
                };
                let no_token = with("").get::<serde_json::Value>("/v1/health");
                let wrong = with("s3cret-tokem").get::<serde_json::Value>("/v1/health");
                let right = with(TOKEN).get::<StatusView>("/v1/status");
                (no_token, wrong, right, unix.get::<serde_json::Value>("/v1/health"))
            }
        })
        .await;
        let (status, e) = api_error(no_token);
        assert_eq!((status, e.code), (401, ErrorCode::Unauthorized));
        assert_eq!(api_error(wrong).0, 401);
        assert_eq!(right.unwrap().instance, "test");
        assert!(unix_still_open.is_ok());

        // The requester of a TCP client names its address.
        let c =
            Client::new(Endpoint::Tcp { addr, token: TOKEN.into() }, "ci-bot".into(), Duration::from_secs(5));
        blocking(move || {
            c.post::<_, SwitchOutcome>(
                "/v1/switch",
                &SwitchRequest { pool: "pool-b".into(), hard: true, ..Default::default() },
            )
            .unwrap()
        })
        .await;
        let requesters = server.fake.requesters.lock().unwrap().clone();
        assert!(requesters[0].starts_with("ci-bot (tcp:127.0.0.1:"), "{requesters:?}");
        server.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stale_socket_is_replaced_and_other_files_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let stale = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        assert!(stale.exists());
        let replaced = bind_unix(&stale).unwrap();
        drop(replaced);
        assert!(!stale.exists());

        let file = dir.path().join("file.sock");
        std::fs::write(&file, "keep me").unwrap();
        assert!(bind_unix(&file).is_err());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");

        let live = dir.path().join("live.sock");
        let _first = bind_unix(&live).unwrap();
        let err = bind_unix(&live).err().unwrap();
        assert!(err.to_string().contains("another process"), "{err}");
    }

    /// Limits small enough for tests.
    fn tight_limits() -> ApiLimits {
        ApiLimits {
            max_connections: 4,
            auth_deadline: Duration::from_millis(1500),
            idle_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_millis(300),
        }
    }

    /// Whether the peer closed `s` within `within` (EOF or reset), reading and dropping data.
    fn closed_within(s: &mut impl std::io::Read, within: Duration) -> bool {
        let start = std::time::Instant::now();
        let mut buf = [0u8; 4096];
        while start.elapsed() < within {
            match s.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                Err(_) => return true,
            }
        }
        false
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_body_gets_408_and_the_connection_closes() {
        let server = TestServer::start_with(false, tight_limits()).await;
        let socket = server.socket.clone();
        let (head, closed) = blocking(move || {
            use std::io::{Read, Write};
            let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            // 10 of the 100 announced bytes, then nothing.
            s.write_all(b"POST /v1/switch HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"pool\":\"p")
                .unwrap();
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).into_owned();
            (head, closed_within(&mut s, Duration::from_secs(5)))
        })
        .await;
        assert!(head.starts_with("HTTP/1.1 408"), "a stalled body is answered: {head:?}");
        assert!(head.to_ascii_lowercase().contains("connection: close"), "{head}");
        assert!(closed, "and the connection is closed");
        let metrics = blocking({
            let c = server.client();
            move || c.get_text("/metrics").unwrap()
        })
        .await;
        assert!(metrics.contains("reason=\"body_timeout\"} 1"), "{metrics}");
        server.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_tcp_connections_are_capped_and_unauthenticated_ones_closed() {
        let server = TestServer::start_with(true, tight_limits()).await;
        let addr = server.tcp_addr.unwrap();
        let unix = server.client();
        let (refused, unix_ok, all_closed, after) = blocking(move || {
            // Twice the cap of idle, unauthenticated connections.
            let mut conns: Vec<std::net::TcpStream> = (0..8)
                .map(|_| {
                    let s = std::net::TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                    s
                })
                .collect();
            std::thread::sleep(Duration::from_millis(100));
            // The ones beyond the cap are closed at once.
            let refused =
                conns.iter_mut().map(|s| closed_within(s, Duration::from_millis(100))).filter(|c| *c).count();
            // The Unix socket still answers while the TCP listener is full.
            let unix_ok = unix.get::<serde_json::Value>("/v1/health").is_ok();
            // The rest are closed after the authentication deadline.
            let all_closed = conns.iter_mut().all(|s| closed_within(s, Duration::from_secs(3)));
            // And the listener takes new connections again.
            let after = Client::new(
                Endpoint::Tcp { addr: addr.to_string(), token: TOKEN.into() },
                "t".into(),
                Duration::from_secs(5),
            )
            .get::<serde_json::Value>("/v1/health")
            .is_ok();
            (refused, unix_ok, all_closed, after)
        })
        .await;
        assert_eq!(refused, 4, "connections beyond the cap of 4 are closed at once");
        assert!(unix_ok, "the Unix socket answers while TCP is full");
        assert!(all_closed, "unauthenticated connections are closed after the deadline");
        assert!(after, "TCP serves again");
        let metrics = blocking({
            let c = server.client();
            move || c.get_text("/metrics").unwrap()
        })
        .await;
        assert!(
            metrics.contains("lb_api_connections_closed_total{listener=\"tcp\",reason=\"limit\"} 4"),
            "{metrics}"
        );
        assert!(
            metrics
                .contains("lb_api_connections_closed_total{listener=\"tcp\",reason=\"unauthenticated\"} 4"),
            "{metrics}"
        );
        server.stop().await;
    }

    #[test]
    fn requester_is_cleaned_up() {
        let mut headers = HeaderMap::new();
        assert_eq!(requester(&headers, "uid=0 pid=1"), "(uid=0 pid=1)");
        headers.insert("x-lb-requester", header::HeaderValue::from_static("  lbctl/0.1.0\tuser=alice  "));
        assert_eq!(requester(&headers, "uid=0 pid=1"), "lbctl/0.1.0user=alice (uid=0 pid=1)");
        headers.insert("x-lb-requester", header::HeaderValue::from_str(&"é".repeat(300)).unwrap());
        let r = requester(&headers, "tcp:[::1]:5");
        assert_eq!(r.chars().count(), MAX_REQUESTER_CHARS + " (tcp:[::1]:5)".len());
    }

    #[test]
    fn bearer_comparison() {
        let mut h = HeaderMap::new();
        assert!(!bearer_matches(&h, "abc"));
        h.insert(header::AUTHORIZATION, header::HeaderValue::from_static("Bearer abc"));
        assert!(bearer_matches(&h, "abc"));
        assert!(!bearer_matches(&h, "abcd"));
        assert!(!bearer_matches(&h, ""));
        h.insert(header::AUTHORIZATION, header::HeaderValue::from_static("bearer abc"));
        assert!(bearer_matches(&h, "abc"));
        h.insert(header::AUTHORIZATION, header::HeaderValue::from_static("Basic abc"));
        assert!(!bearer_matches(&h, "abc"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"a", b""));
    }

    #[test]
    fn routes_parse() {
        assert_eq!(Route::parse("/v1/services/web/split"), Some(Route::Split(Some("web".into()))));
        assert_eq!(Route::parse("/v1/split"), Some(Route::Split(None)));
        assert_eq!(Route::parse("/v1/services//split"), None);
        assert_eq!(Route::parse("/v1/services/web/"), None);
        assert_eq!(Route::parse("/metrics"), Some(Route::Metrics));
        assert!(Route::Service("We b".into()).service().is_err());
        assert_eq!(history_query(None).unwrap(), (None, DEFAULT_HISTORY_LIMIT));
        assert_eq!(history_query(Some("limit=10000&service=web")).unwrap(), (Some("web".into()), 10000));
        assert!(history_query(Some("servce=web")).is_err());
    }

    #[test]
    fn openapi_lists_every_route() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).expect("openapi.json is JSON");
        assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
        let routes = [
            ("/v1/health", "get"),
            ("/v1/status", "get"),
            ("/v1/services", "get"),
            ("/v1/services/{name}", "get"),
            ("/v1/services/{name}/switch", "post"),
            ("/v1/switch", "post"),
            ("/v1/services/{name}/rollback", "post"),
            ("/v1/rollback", "post"),
            ("/v1/services/{name}/split", "post"),
            ("/v1/split", "post"),
            ("/v1/services/{name}/drain", "get"),
            ("/v1/drain", "get"),
            ("/v1/services/{name}/watch", "get"),
            ("/v1/watch", "get"),
            ("/v1/history", "get"),
            ("/v1/reload", "post"),
            ("/v1/shutdown", "post"),
            ("/v1/openapi.json", "get"),
            ("/metrics", "get"),
        ];
        let paths = doc["paths"].as_object().expect("paths");
        assert_eq!(paths.len(), routes.iter().map(|r| r.0).collect::<std::collections::BTreeSet<_>>().len());
        for (path, method) in routes {
            assert!(paths.get(path).and_then(|p| p.get(method)).is_some(), "{method} {path} missing");
            let route = Route::parse(&path.replace("{name}", "web")).expect(path);
            assert_eq!(route.method().as_str().to_ascii_lowercase(), method, "{path}");
        }
        // Every $ref resolves.
        fn refs<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
            match v {
                serde_json::Value::Object(m) => {
                    for (k, v) in m {
                        match (k.as_str(), v.as_str()) {
                            ("$ref", Some(r)) => out.push(r),
                            _ => refs(v, out),
                        }
                    }
                }
                serde_json::Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(!all.is_empty());
        for r in all {
            let pointer = r.strip_prefix('#').expect(r);
            assert!(doc.pointer(pointer).is_some(), "dangling $ref {r}");
        }
    }
}
