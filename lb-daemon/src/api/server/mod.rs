//! The management API's HTTP/1.1 side: JSON over a Unix socket (mode 0600, no token: the file
//! mode is the access control) and optionally over TCP with a bearer token.
//!
//! This file holds the accept loops and the per-connection tasks; routing, body limits,
//! authentication and error bodies are in `routes`, the connection bounds in `limits`, the Unix
//! socket file in `unix`. Everything the daemon does is behind [`Control`], whose synchronous methods run on tokio's blocking pool so a slow one
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
    ApiError, BackendRequest, ErrorCode, HealthView, RollbackRequest, ShutdownRequest, SplitRequest,
    SwitchRequest,
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
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

/// Content type of `GET /metrics` (Prometheus text exposition format).
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub mod identity;
mod limits;
mod routes;
#[cfg(test)]
mod tests;
mod unix;

pub use limits::ApiLimits;
use limits::{ConnActivity, ConnStats, watchdog};
use routes::handle;
use unix::{UnixSocket, bind_unix};

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
    /// A second TCP bearer token that may only read (GET); changes sent with it get 403.
    pub read_token: Option<String>,
    /// Optional listener serving only `GET /metrics`, without a token.
    pub metrics: Option<SocketAddr>,
    /// The flow sync (`[sync]`), for `sync` in the status and the `lb_sync_*` metrics.
    pub sync: Option<Arc<crate::fleet::sync::FlowSync>>,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token stays out of logs.
        f.debug_struct("ServeOptions")
            .field("unix_socket", &self.unix_socket)
            .field("tcp", &self.tcp.as_ref().map(|(addr, _)| (addr, "<token>")))
            .field("limits", &self.limits)
            .field("read_token", &self.read_token.as_ref().map(|_| "<token>"))
            .field("metrics", &self.metrics)
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
    serve_notifying(control, opts, shutdown, || {}).await
}

/// [`serve`], calling `listening` once every listener is bound, before the first request is
/// accepted: the daemon tells systemd READY=1 there (`Type=notify`), so `systemctl start`
/// returns only when lbctl can reach the API.
pub async fn serve_notifying(
    control: Arc<dyn Control>,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
    listening: impl FnOnce(),
) -> anyhow::Result<()> {
    if let Some((_, token)) = &opts.tcp
        && token.trim().is_empty()
    {
        bail!("the TCP API needs a non-empty bearer token");
    }
    if opts.read_token.as_ref().is_some_and(|t| t.trim().is_empty()) {
        bail!("the read-only token must not be empty");
    }
    let metrics = match opts.metrics {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for /metrics (api.metrics)"))?;
            tracing::info!(%addr, "serving GET /metrics on TCP (no token, nothing else)");
            Some(listener)
        }
        None => None,
    };
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
    listening();
    let extra = Extra { read_token: opts.read_token, metrics, sync: opts.sync };
    serve_listeners(control, unix, tcp, extra, opts.limits, opts.fleet, shutdown).await;
    Ok(())
}

/// What [`serve_listeners`] takes beyond [`serve_on`]'s listeners.
#[derive(Default)]
struct Extra {
    /// The read-only TCP bearer token.
    read_token: Option<String>,
    /// The listener serving only `GET /metrics`.
    metrics: Option<TcpListener>,
    /// The flow sync (`[sync]`), for `sync` in the status and the `lb_sync_*` metrics.
    sync: Option<Arc<crate::fleet::sync::FlowSync>>,
}

/// Per-server state shared by every connection.
struct Shared {
    control: Arc<dyn Control>,
    /// Bearer token for TCP connections.
    token: Option<String>,
    /// Read-only bearer token for TCP connections (GET requests only).
    read_token: Option<String>,
    limits: ApiLimits,
    /// Connection slots of the Unix listener, of the TCP one and of the metrics one.
    slots: [Arc<Semaphore>; 3],
    stats: ConnStats,
    /// The BGP announcer, when configured.
    fleet: Option<Arc<crate::fleet::Fleet>>,
    /// The flow sync, when configured.
    sync: Option<Arc<crate::fleet::sync::FlowSync>>,
}

/// Who is on the other end of a connection.
#[derive(Clone)]
struct Peer {
    /// `uid=0 pid=4242` or `tcp:192.0.2.1:50000`.
    desc: Arc<str>,
    /// TCP connections must authenticate.
    tcp: bool,
    /// A connection of the `api.metrics` listener: `GET /metrics` and nothing else.
    metrics_only: bool,
    /// Who the history records (see [`identity`]): the uid's name, or [`identity::TCP_USER`].
    user: Arc<str>,
}

impl Peer {
    /// Index of the peer's listener in `Shared::slots` and [`limits::LISTENERS`].
    fn listener(&self) -> usize {
        if self.metrics_only { 2 } else { usize::from(self.tcp) }
    }
}

/// The accept loops, then the drain. Listeners are already bound. (Tests; [`serve`] calls
/// [`serve_listeners`].)
#[cfg(test)]
async fn serve_on(
    control: Arc<dyn Control>,
    unix: UnixSocket,
    tcp: Option<(TcpListener, String)>,
    limits: ApiLimits,
    (fleet, sync): (Option<Arc<crate::fleet::Fleet>>, Option<Arc<crate::fleet::sync::FlowSync>>),
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let extra = Extra { sync, ..Extra::default() };
    serve_listeners(control, unix, tcp, extra, limits, fleet, shutdown).await;
}

/// The accept loops, then the drain, with the read-only token and the metrics listener.
/// Listeners are already bound.
async fn serve_listeners(
    control: Arc<dyn Control>,
    unix: UnixSocket,
    tcp: Option<(TcpListener, String)>,
    extra: Extra,
    limits: ApiLimits,
    fleet: Option<Arc<crate::fleet::Fleet>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let Extra { read_token, metrics: metrics_listener, sync } = extra;
    let (tcp_listener, token) = match tcp {
        Some((l, t)) => (Some(l), Some(t)),
        None => (None, None),
    };
    let slots = || Arc::new(Semaphore::new(limits.max_connections));
    let shared = Arc::new(Shared {
        control,
        token,
        read_token,
        limits,
        slots: [slots(), slots(), slots()],
        stats: ConnStats::default(),
        fleet,
        sync,
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
                    let (desc, user) = match stream.peer_cred() {
                        // tokio reads SO_PEERCRED (getsockopt) here.
                        Ok(cred) => (match cred.pid() {
                            Some(pid) => format!("uid={} pid={pid}", cred.uid()),
                            None => format!("uid={}", cred.uid()),
                        }, identity::user_of_uid(cred.uid())),
                        Err(e) => (format!("unix peer, credentials unknown: {e}"), "unknown".to_string()),
                    };
                    let peer = Peer { desc: desc.into(), tcp: false, metrics_only: false, user: user.into() };
                    spawn_connection(stream, peer, &shared, &stop_rx, &alive_tx);
                }
                Err(e) => accept_failed("unix", e).await,
            },
            accepted = accept_tcp(tcp_listener.as_ref()) => match accepted {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let peer = Peer {
                        desc: format!("tcp:{addr}").into(),
                        tcp: true,
                        metrics_only: false,
                        user: identity::TCP_USER.into(),
                    };
                    spawn_connection(stream, peer, &shared, &stop_rx, &alive_tx);
                }
                Err(e) => accept_failed("tcp", e).await,
            },
            accepted = accept_tcp(metrics_listener.as_ref()) => match accepted {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let peer = Peer {
                        desc: format!("metrics:{addr}").into(),
                        tcp: false,
                        metrics_only: true,
                        user: "metrics".into(),
                    };
                    spawn_connection(stream, peer, &shared, &stop_rx, &alive_tx);
                }
                Err(e) => accept_failed("metrics", e).await,
            },
        }
    }
    drop(tcp_listener);
    drop(metrics_listener);
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
    let listener = peer.listener();
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
