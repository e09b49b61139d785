//! Client-side traffic from the client namespace: paced short connections ([`LoadHandle`]),
//! long-lived connections ([`LongLived`]) and single requests ([`request`]).
//!
//! The protocol is the one of `test-backend`: send a line, get one line back with the backend's
//! name. All sockets are blocking std sockets with timeouts ([`DEFAULT_TIMEOUT`] unless told);
//! sockets are created (connected) on threads that entered the client namespace — a socket keeps
//! its namespace, so reading and writing it later works from any thread.
//!
//! Every load run is bounded: by a number of connections, by a duration and by [`LoadHandle::stop`]
//! (also called when the handle is dropped, e.g. when a test panics), whichever comes first. A
//! connection in flight when a bound is reached still finishes, within its own timeouts.

use anyhow::{Context, Result, anyhow, bail, ensure};
use std::{
    collections::BTreeMap,
    io::{ErrorKind, Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::netns::NetNs;

/// Connect, write and read timeout of a connection unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// A bounded run of short connections; see [`LoadHandle::start`].
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Where to connect (a VIP, or a backend directly).
    pub target: SocketAddr,
    /// New connections per second, over all workers (0: as fast as the workers go).
    pub rate_per_s: u32,
    /// At most this many connections in total.
    pub max_connections: u32,
    /// No connection starts later than this after the start.
    pub max_duration: Duration,
    /// Threads making connections (each makes one connection at a time).
    pub workers: usize,
    /// Client addresses to bind to, round robin (empty: the kernel picks the source); of the
    /// target's family.
    pub source_addrs: Vec<IpAddr>,
    /// Connect timeout, and read/write timeout of the one request.
    pub timeout: Duration,
}

impl LoadOptions {
    /// 100 connections/s to `target`, at most 1000 connections and 10 s, 4 workers, no source
    /// binding, [`DEFAULT_TIMEOUT`].
    pub fn new(target: SocketAddr) -> Self {
        Self {
            target,
            rate_per_s: 100,
            max_connections: 1000,
            max_duration: Duration::from_secs(10),
            workers: 4,
            source_addrs: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// The outcome of one short connection.
#[derive(Clone, Debug)]
pub struct ConnResult {
    /// When the connection started, since the start of the run.
    pub at: Duration,
    /// How long connect + request + answer took (or until the failure).
    pub took: Duration,
    /// The backend name answered, if any.
    pub backend: Option<String>,
    /// Why the connection failed, if it did.
    pub error: Option<String>,
}

impl ConnResult {
    /// Whether the connection got an answer.
    pub fn is_ok(&self) -> bool {
        self.error.is_none()
    }
}

/// All connections of a run, ordered by start time.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    /// One entry per connection.
    pub results: Vec<ConnResult>,
}

impl LoadReport {
    /// Number of connections made.
    pub fn len(&self) -> usize {
        self.results.len()
    }

    /// Whether no connection was made.
    pub fn is_empty(&self) -> bool {
        self.results.is_empty()
    }

    /// Number of connections that got an answer.
    pub fn ok(&self) -> usize {
        self.results.iter().filter(|r| r.is_ok()).count()
    }

    /// Number of connections that failed.
    pub fn failed(&self) -> usize {
        self.results.len() - self.ok()
    }

    /// The failed connections.
    pub fn failures(&self) -> impl Iterator<Item = &ConnResult> {
        self.results.iter().filter(|r| !r.is_ok())
    }

    /// Answers per backend name.
    pub fn by_backend(&self) -> BTreeMap<String, u32> {
        let mut map = BTreeMap::new();
        for name in self.results.iter().filter_map(|r| r.backend.as_ref()) {
            *map.entry(name.clone()).or_insert(0) += 1;
        }
        map
    }

    /// The connections started at or after `t`.
    pub fn since(&self, t: Duration) -> LoadReport {
        LoadReport { results: self.results.iter().filter(|r| r.at >= t).cloned().collect() }
    }

    /// The connections started before `t`.
    pub fn until(&self, t: Duration) -> LoadReport {
        LoadReport { results: self.results.iter().filter(|r| r.at < t).cloned().collect() }
    }

    /// One line for assertion messages: counts, answers per backend, the first few errors.
    pub fn summary(&self) -> String {
        let errors: Vec<String> = self
            .failures()
            .take(3)
            .map(|r| format!("at {:?}: {}", r.at, r.error.as_deref().unwrap_or("")))
            .collect();
        format!(
            "{} connections, {} ok, {} failed, by backend {:?}, first errors {:?}",
            self.len(),
            self.ok(),
            self.failed(),
            self.by_backend(),
            errors
        )
    }
}

/// State shared by the workers of one run.
struct Shared {
    opts: LoadOptions,
    start: Instant,
    next: AtomicU64,
    stop: AtomicBool,
    results: Mutex<Vec<ConnResult>>,
}

/// A running load; stops (and joins its threads) on [`stop`](Self::stop), [`wait`](Self::wait)
/// or drop.
pub struct LoadHandle {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl LoadHandle {
    /// Starts `opts.workers` threads in the `client` namespace making connections to
    /// `opts.target`, paced to `opts.rate_per_s` in total, until `opts.max_connections` or
    /// `opts.max_duration` is reached or the handle is stopped.
    pub fn start(client: &NetNs, opts: LoadOptions) -> Result<LoadHandle> {
        ensure!(opts.workers >= 1, "at least one worker");
        ensure!(opts.timeout > Duration::ZERO, "timeout must be positive");
        let shared = Arc::new(Shared {
            opts,
            start: Instant::now(),
            next: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            results: Mutex::new(Vec::new()),
        });
        // Threads inherit the network namespace of the thread that creates them: enter the
        // client namespace on a helper thread and create the workers from there.
        let n = shared.opts.workers;
        let spawned = std::thread::scope(|s| {
            s.spawn(|| -> Result<Vec<JoinHandle<()>>> {
                let _guard = client.enter()?;
                let mut workers = Vec::with_capacity(n);
                for i in 0..n {
                    let mine = shared.clone();
                    let w = std::thread::Builder::new()
                        .name(format!("load-{i}"))
                        .spawn(move || worker(&mine))
                        .context("spawning a load worker");
                    match w {
                        Ok(w) => workers.push(w),
                        Err(e) => {
                            shared.stop.store(true, Ordering::SeqCst);
                            for w in workers {
                                let _ = w.join();
                            }
                            return Err(e);
                        }
                    }
                }
                Ok(workers)
            })
            .join()
            .map_err(|_| anyhow!("load starter thread panicked"))?
        })?;
        Ok(LoadHandle { shared, workers: spawned })
    }

    /// Number of connections finished so far.
    pub fn snapshot(&self) -> usize {
        self.shared.results.lock().unwrap().len()
    }

    /// Time since the start of the run (the clock of [`ConnResult::at`]).
    pub fn elapsed(&self) -> Duration {
        self.shared.start.elapsed()
    }

    /// When the run started (the zero of [`ConnResult::at`]).
    pub fn started_at(&self) -> Instant {
        self.shared.start
    }

    /// The connections finished so far from the `from`-th on, in the order they finished:
    /// for showing a run while it goes on (pass the count already shown).
    pub fn results_from(&self, from: usize) -> Vec<ConnResult> {
        let results = self.shared.results.lock().unwrap();
        results.get(from..).unwrap_or_default().to_vec()
    }

    /// Whether every worker has finished (a bound was reached).
    pub fn is_finished(&self) -> bool {
        self.workers.iter().all(|w| w.is_finished())
    }

    /// Stops starting connections, waits for those in flight and returns the report.
    pub fn stop(mut self) -> LoadReport {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.finish()
    }

    /// Waits until the run reaches one of its bounds and returns the report.
    pub fn wait(mut self) -> LoadReport {
        self.finish()
    }

    fn finish(&mut self) -> LoadReport {
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        let mut results = std::mem::take(&mut *self.shared.results.lock().unwrap());
        results.sort_by_key(|r| r.at);
        LoadReport { results }
    }
}

impl Drop for LoadHandle {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// One worker: takes the next connection number, sleeps until its slot, connects.
fn worker(shared: &Shared) {
    let opts = &shared.opts;
    let deadline = shared.start + opts.max_duration;
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let i = shared.next.fetch_add(1, Ordering::SeqCst);
        if i >= u64::from(opts.max_connections) {
            return;
        }
        let due = if opts.rate_per_s == 0 {
            shared.start
        } else {
            shared.start + Duration::from_nanos(i * 1_000_000_000 / u64::from(opts.rate_per_s))
        };
        if due >= deadline {
            return;
        }
        // Sleep until the slot, in small steps so that stop() is quick.
        loop {
            if shared.stop.load(Ordering::SeqCst) {
                return;
            }
            let now = Instant::now();
            if now >= due {
                break;
            }
            std::thread::sleep((due - now).min(Duration::from_millis(20)));
        }
        if Instant::now() >= deadline {
            return;
        }
        let source = if opts.source_addrs.is_empty() {
            None
        } else {
            Some(opts.source_addrs[(i % opts.source_addrs.len() as u64) as usize])
        };
        let began = Instant::now();
        let outcome = one_request(opts.target, source, opts.timeout);
        let result = ConnResult {
            at: began - shared.start,
            took: began.elapsed(),
            backend: outcome.as_ref().ok().cloned(),
            error: outcome.err(),
        };
        shared.results.lock().unwrap().push(result);
    }
}

/// Connect (from `source` if given), send `hello`, read the one-line answer, close.
fn one_request(target: SocketAddr, source: Option<IpAddr>, timeout: Duration) -> Result<String, String> {
    let mut stream = connect(target, source, timeout).map_err(|e| format!("connect: {e}"))?;
    let mut buf = Vec::new();
    exchange(&mut stream, &mut buf, b"hello\n", Instant::now() + timeout)
}

/// Writes `request` and reads one line (up to `deadline`), with `buf` keeping bytes read past
/// the line for the next exchange on the same stream.
fn exchange(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    request: &[u8],
    deadline: Instant,
) -> Result<String, String> {
    let remaining = |what: &str| -> Result<Duration, String> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() { Err(format!("{what}: timed out")) } else { Ok(left) }
    };
    stream.set_write_timeout(Some(remaining("write")?)).map_err(|e| format!("write: {e}"))?;
    stream.write_all(request).map_err(|e| format!("write: {e}"))?;
    read_line(stream, buf, deadline)
}

/// Reads until a newline or `deadline`; returns the line without it.
fn read_line(stream: &mut TcpStream, buf: &mut Vec<u8>, deadline: Instant) -> Result<String, String> {
    let mut chunk = [0u8; 256];
    loop {
        if let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            return Ok(String::from_utf8_lossy(&line[..pos]).trim_end_matches('\r').to_string());
        }
        if buf.len() > 4096 {
            return Err("read: answer line too long".into());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("read: timed out".into());
        }
        stream.set_read_timeout(Some(left)).map_err(|e| format!("read: {e}"))?;
        match stream.read(&mut chunk) {
            Ok(0) => return Err("read: connection closed before the answer".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err("read: timed out".into());
            }
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

/// Connects to `target` within `timeout`, from `source` (any port) if given.
fn connect(target: SocketAddr, source: Option<IpAddr>, timeout: Duration) -> std::io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect_timeout(&target, timeout);
    };
    if source.is_ipv4() != target.is_ipv4() {
        return Err(std::io::Error::new(ErrorKind::InvalidInput, "source and target of different families"));
    }
    let domain = if source.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let raw = fd.as_raw_fd();
    let check = |rc: libc::c_int| if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) };
    // Let connect() pick the port by the full 4-tuple, not bind() by the address alone.
    let one: libc::c_int = 1;
    check(unsafe {
        libc::setsockopt(
            raw,
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    let local = SockAddr::new(SocketAddr::new(source, 0));
    check(unsafe { libc::bind(raw, local.ptr(), local.len()) })?;
    let remote = SockAddr::new(target);
    let rc = unsafe { libc::connect(raw, remote.ptr(), remote.len()) };
    if rc < 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(err);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(std::io::Error::new(ErrorKind::TimedOut, "connection timed out"));
            }
            let mut pfd = libc::pollfd { fd: raw, events: libc::POLLOUT, revents: 0 };
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
            let n = unsafe { libc::poll(&mut pfd, 1, ms) };
            if n < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            if n > 0 {
                break;
            }
        }
        let mut so_error: libc::c_int = 0;
        let mut optlen = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        check(unsafe {
            libc::getsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&mut so_error as *mut libc::c_int).cast(),
                &mut optlen,
            )
        })?;
        if so_error != 0 {
            return Err(std::io::Error::from_raw_os_error(so_error));
        }
    }
    let stream = TcpStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// A socket address as the C socket calls take it.
enum SockAddr {
    V4(libc::sockaddr_in),
    V6(libc::sockaddr_in6),
}

impl SockAddr {
    fn new(addr: SocketAddr) -> Self {
        match addr {
            SocketAddr::V4(a) => SockAddr::V4(libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
                sin_zero: [0; 8],
            }),
            SocketAddr::V6(a) => SockAddr::V6(libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: 0,
            }),
        }
    }

    fn ptr(&self) -> *const libc::sockaddr {
        match self {
            SockAddr::V4(a) => (a as *const libc::sockaddr_in).cast(),
            SockAddr::V6(a) => (a as *const libc::sockaddr_in6).cast(),
        }
    }

    fn len(&self) -> libc::socklen_t {
        (match self {
            SockAddr::V4(_) => std::mem::size_of::<libc::sockaddr_in>(),
            SockAddr::V6(_) => std::mem::size_of::<libc::sockaddr_in6>(),
        }) as libc::socklen_t
    }
}

/// One request from the `client` namespace: connect to `target`, send a line, return the
/// answered backend name (errors: connection refused, timeouts, ...; [`DEFAULT_TIMEOUT`] each).
pub fn request(client: &NetNs, target: SocketAddr) -> Result<String> {
    client
        .run_in(|| one_request(target, None, DEFAULT_TIMEOUT))?
        .map_err(|e| anyhow!("request to {target} from {}: {e}", client.name()))
}

/// One long-lived connection of [`LongLived`].
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// Connections opened from the client namespace and kept open, each asked repeatedly which
/// backend it talks to. Closed on drop.
pub struct LongLived {
    conns: Vec<Conn>,
    timeout: Duration,
}

impl LongLived {
    /// Opens `n` connections to `target` from the `client` namespace (fails if any fails;
    /// [`DEFAULT_TIMEOUT`] for each connect and for each later [`ask`](Self::ask)).
    pub fn open(client: &NetNs, target: SocketAddr, n: usize) -> Result<LongLived> {
        ensure!(n <= 10_000, "at most 10000 long-lived connections");
        let streams = client.run_in(|| -> Result<Vec<TcpStream>> {
            let mut streams = Vec::with_capacity(n);
            for i in 0..n {
                let s = connect(target, None, DEFAULT_TIMEOUT)
                    .with_context(|| format!("long-lived connection {i} to {target}"))?;
                streams.push(s);
            }
            Ok(streams)
        })??;
        Ok(LongLived {
            conns: streams.into_iter().map(|stream| Conn { stream, buf: Vec::new() }).collect(),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Number of connections.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Whether there are no connections.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Asks every connection once (one line out, one line back): the backend name per
    /// connection, or why not. All requests go out first, then the answers are read within one
    /// shared timeout, so a silent connection costs the timeout once, not once per connection.
    pub fn ask(&mut self) -> Vec<Result<String, String>> {
        let deadline = Instant::now() + self.timeout;
        let sent: Vec<Result<(), String>> = self
            .conns
            .iter_mut()
            .map(|c| {
                c.stream.set_write_timeout(Some(self.timeout)).map_err(|e| format!("write: {e}"))?;
                c.stream.write_all(b"which\n").map_err(|e| format!("write: {e}"))
            })
            .collect();
        self.conns
            .iter_mut()
            .zip(sent)
            .map(|(c, sent)| {
                sent?;
                // Answers already queued are read even after the deadline.
                let deadline = deadline.max(Instant::now() + Duration::from_millis(5));
                read_line(&mut c.stream, &mut c.buf, deadline)
            })
            .collect()
    }

    /// The local (client) address of every connection.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.conns.iter().filter_map(|c| c.stream.local_addr().ok()).collect()
    }
}

/// Fails unless every answer is `Ok(expected)` (for tests of long-lived connections).
pub fn expect_all(answers: &[Result<String, String>], expected: &str) -> Result<()> {
    for (i, a) in answers.iter().enumerate() {
        match a {
            Ok(name) if name == expected => {}
            other => bail!("connection {i}: expected {expected:?}, got {other:?} (all: {answers:?})"),
        }
    }
    Ok(())
}
