use super::{identity::requester, limits::*, routes::*, unix::*, *};
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
                        admin: Default::default(),
                        configured_weight: None,
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
            version: "0.1.0".into(),
            uptime_s: 7,
            reasons: vec![("pass_not_vip".into(), 3)],
            ..StatusView::fixture("test", vec![self.service_view()])
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
            revision: None,
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
                backend: None,
            })
            .collect())
    }
    fn backend(
        &self,
        service: Option<&str>,
        req: &BackendRequest,
        requester: &str,
    ) -> Result<BackendOutcome, ApiError> {
        self.check(service)?;
        if req.addr != "10.0.0.1:8080" {
            return Err(ApiError::not_found(format!("no backend {} in any pool", req.addr)));
        }
        self.requesters.lock().unwrap().push(requester.to_owned());
        let before = BackendSetting { admin: BackendAdmin::Enabled, weight: 1 };
        let after = BackendSetting { admin: BackendAdmin::Drain, weight: 1 };
        Ok(BackendOutcome {
            service: "web".into(),
            pool: "pool-a".into(),
            addr: req.addr.clone(),
            changed: true,
            before,
            after,
            apply_us: 5,
            history_id: Some(2),
            warnings: vec![],
        })
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
                    synced: 0,
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
                serve_on(control, unix, Some((listener, TOKEN.to_owned())), limits, (None, None), shutdown)
                    .await;
                Ok(())
            });
            (task, Some(addr))
        } else {
            let opts = ServeOptions {
                unix_socket: socket.clone(),
                tcp: None,
                limits,
                fleet: None,
                read_token: None,
                metrics: None,
                sync: None,
            };
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
    // The client claims to be alice; the history records the name of this process's uid,
    // read from the socket's peer credentials.
    let uid = nix::unistd::getuid();
    let me = nix::unistd::User::from_uid(uid).unwrap().map(|u| u.name).unwrap_or(format!("uid:{uid}"));
    assert_ne!(me, "alice");
    for r in &requesters {
        assert!(r.starts_with(&format!("{me} (test-suite; uid={uid} pid=")), "{r}");
        assert!(!r.contains("alice"), "{r}");
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
            client.post("/v1/switch", &SwitchRequest { pool: "x".repeat(70 * 1024), ..Default::default() }),
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
    // This request's own connection, and perhaps the history request's: the client closes it
    // after the answer, but the server's task may not have seen the close yet.
    let unix_connections = metrics
        .lines()
        .find_map(|l| l.strip_prefix("lb_api_connections{listener=\"unix\"} "))
        .and_then(|v| v.parse::<u32>().ok());
    assert!(matches!(unix_connections, Some(1..=2)), "{metrics}");
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
    let c = Client::new(Endpoint::Tcp { addr, token: TOKEN.into() }, "ci-bot".into(), Duration::from_secs(5));
    blocking(move || {
        c.post::<_, SwitchOutcome>(
            "/v1/switch",
            &SwitchRequest { pool: "pool-b".into(), hard: true, ..Default::default() },
        )
        .unwrap()
    })
    .await;
    let requesters = server.fake.requesters.lock().unwrap().clone();
    assert!(requesters[0].starts_with("api-token (ci-bot; tcp:127.0.0.1:"), "{requesters:?}");
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
        metrics.contains("lb_api_connections_closed_total{listener=\"tcp\",reason=\"unauthenticated\"} 4"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_route_changes_one_backend_and_records_the_peer_s_user() {
    let server = TestServer::start(false).await;
    let client = server.client();
    let (named, unnamed, unknown) = blocking(move || {
        let req = BackendRequest {
            addr: "10.0.0.1:8080".into(),
            action: BackendAction::Drain,
            ..Default::default()
        };
        let named = client.backend(Some("web"), &req).unwrap();
        let unnamed: BackendOutcome = client.post("/v1/backend", &req).unwrap();
        let other = BackendRequest { addr: "10.9.9.9:1".into(), ..req };
        (named, unnamed, client.post::<_, serde_json::Value>("/v1/backend", &other))
    })
    .await;
    assert_eq!((named.pool.as_str(), named.after.admin), ("pool-a", BackendAdmin::Drain));
    assert_eq!(unnamed, named);
    let (status, e) = api_error(unknown);
    assert_eq!((status, e.code), (404, ErrorCode::NotFound));
    let requesters = server.fake.requesters.lock().unwrap().clone();
    assert_eq!(requesters.len(), 2);
    assert!(
        requesters.iter().all(|r| !r.contains("alice") && r.contains("(test-suite; uid=")),
        "{requesters:?}"
    );
    server.stop().await;
}

#[test]
fn requester_is_cleaned_up() {
    let mut headers = HeaderMap::new();
    assert_eq!(requester(&headers, "root", "uid=0 pid=1"), "root (uid=0 pid=1)");
    headers
        .insert("x-lb-requester", header::HeaderValue::from_static("  lbctl/0.1.0 user=mallory\thost=h  "));
    assert_eq!(requester(&headers, "bob", "uid=1000 pid=1"), "bob (lbctl/0.1.0 host=h; uid=1000 pid=1)");
    headers.insert("x-lb-requester", header::HeaderValue::from_str(&"é".repeat(300)).unwrap());
    let r = requester(&headers, "api-token", "tcp:[::1]:5");
    assert_eq!(r.chars().count(), "api-token (".len() + MAX_REQUESTER_CHARS + "; tcp:[::1]:5)".len());
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
        ("/v1/services/{name}/backend", "post"),
        ("/v1/backend", "post"),
    ];
    // The host paths, answered by `fleet::api::route` before the routes above.
    let host_routes = [("/v1/host", "get"), ("/v1/host/drain", "post"), ("/v1/host/undrain", "post")];
    // The fleet path, answered by `fleet::etcd::api::route` (404 without [fleet]).
    let fleet_routes = [("/v1/fleet", "get")];
    let paths = doc["paths"].as_object().expect("paths");
    assert_eq!(
        paths.len(),
        routes
            .iter()
            .chain(&host_routes)
            .chain(&fleet_routes)
            .map(|r| r.0)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    );
    for (path, method) in fleet_routes {
        assert!(paths.get(path).and_then(|p| p.get(method)).is_some(), "{method} {path} missing");
    }
    for (path, method) in routes {
        assert!(paths.get(path).and_then(|p| p.get(method)).is_some(), "{method} {path} missing");
        let route = Route::parse(&path.replace("{name}", "web")).expect(path);
        assert_eq!(route.method().as_str().to_ascii_lowercase(), method, "{path}");
    }
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    for (path, method) in host_routes {
        assert!(paths.get(path).and_then(|p| p.get(method)).is_some(), "{method} {path} missing");
        let right = hyper::Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
        let wrong = if right == hyper::Method::GET { hyper::Method::POST } else { hyper::Method::GET };
        // Without [bgp]: the documented method gets "no [bgp] table", the other one is refused.
        let answer = runtime.block_on(crate::fleet::api::route(None, &right, path, "t")).expect(path);
        assert_eq!(answer.err().map(|e| e.code), Some(crate::api::model::ErrorCode::NotFound), "{path}");
        let answer = runtime.block_on(crate::fleet::api::route(None, &wrong, path, "t")).expect(path);
        assert_eq!(
            answer.err().map(|e| e.code),
            Some(crate::api::model::ErrorCode::InvalidRequest),
            "{path}"
        );
    }
    assert!(doc.pointer("/components/schemas/StatusView/properties/bgp").is_some());
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

const READ_TOKEN: &str = "read-only-token-0123";

impl TestServer {
    /// A server with TCP (full and read-only token) and the metrics listener; returns it with
    /// the metrics listener's address.
    async fn start_observable() -> (TestServer, SocketAddr) {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("lb.sock");
        let fake = Arc::new(Fake::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let control: Arc<dyn Control> = fake.clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics_addr = metrics.local_addr().unwrap();
        let unix = bind_unix(&socket).unwrap();
        let extra = Extra { read_token: Some(READ_TOKEN.into()), metrics: Some(metrics), sync: None };
        let task = tokio::spawn(async move {
            let tcp = Some((listener, TOKEN.to_owned()));
            serve_listeners(control, unix, tcp, extra, ApiLimits::default(), None, shutdown).await;
            Ok(())
        });
        let server =
            TestServer { _dir: dir, socket, fake, stop: Some(stop), task: Some(task), tcp_addr: Some(addr) };
        (server, metrics_addr)
    }
}

/// Sends raw bytes over TCP and returns the whole response (the request should close).
fn raw_tcp(addr: SocketAddr, request: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Every mutating route of the API: the POST paths of the OpenAPI document (so a route added
/// there is covered too) and the host paths of `[bgp]`.
fn mutating_paths() -> Vec<String> {
    let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).unwrap();
    let mut paths: Vec<String> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, ops)| ops.get("post").is_some())
        .map(|(p, _)| p.replace("{name}", "web").replace("{addr}", "10.0.0.1:8080"))
        .collect();
    paths.extend(["/v1/host/drain".to_owned(), "/v1/host/undrain".to_owned()]);
    paths
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_token_may_read_but_not_change_anything() {
    let (server, _) = TestServer::start_observable().await;
    let addr = server.tcp_addr.unwrap().to_string();
    let paths = mutating_paths();
    assert!(paths.len() >= 10, "{paths:?}");
    let (reads, refused, full) = blocking({
        let addr = addr.clone();
        move || {
            let with = |token: &str| {
                Client::new(
                    Endpoint::Tcp { addr: addr.clone(), token: token.into() },
                    "dashboard".into(),
                    Duration::from_secs(5),
                )
            };
            let read = with(READ_TOKEN);
            let reads = [
                "/v1/health",
                "/v1/status",
                "/v1/services",
                "/v1/services/web",
                "/v1/drain",
                "/v1/services/web/drain",
                "/v1/watch",
                "/v1/history",
                "/v1/history?service=web&limit=2",
                "/v1/openapi.json",
            ]
            .map(|p| (p, read.get::<serde_json::Value>(p).map(|_| ())));
            let metrics = read.get_text("/metrics");
            // Every change, with a body that would be valid for the full token.
            let body = serde_json::json!({ "pool": "pool-b", "hard": true, "shares": { "pool-a": 50, "pool-b": 50 } });
            let refused: Vec<_> = paths
                .iter()
                .map(|p| (p.clone(), read.post::<_, serde_json::Value>(p, &body)))
                .collect();
            // The full token still changes things.
            let full = with(TOKEN)
                .post::<_, SwitchOutcome>("/v1/switch", &SwitchRequest { pool: "pool-b".into(), ..Default::default() });
            ((reads, metrics), refused, full)
        }
    })
    .await;
    let (reads, metrics) = reads;
    for (path, r) in reads {
        assert!(r.is_ok(), "GET {path} with the read-only token: {r:?}");
    }
    assert!(metrics.unwrap().contains("lb_up 1"));
    for (path, r) in refused {
        let (status, e) = api_error(r);
        assert_eq!((status, e.code), (403, ErrorCode::Forbidden), "POST {path}: {e:?}");
        assert!(e.message.contains("read-only token"), "{path}: {}", e.message);
    }
    // Nothing reached the control plane but the full token's switch.
    assert_eq!(full.unwrap().after, Active::Pool("pool-b".into()));
    let requesters = server.fake.requesters.lock().unwrap().clone();
    assert_eq!(requesters.len(), 1, "{requesters:?}");
    // A TCP caller is who its token says (`api-token`), whatever it claims, then the details.
    assert!(requesters[0].starts_with("api-token (dashboard; tcp:"), "{requesters:?}");

    // Other methods are changes too; a wrong token is still 401.
    let tcp = server.tcp_addr.unwrap();
    for method in ["PUT", "DELETE", "PATCH"] {
        let resp = blocking(move || {
            raw_tcp(
                tcp,
                &format!(
                    "{method} /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {READ_TOKEN}\r\n\
                     Content-Length: 0\r\nConnection: close\r\n\r\n"
                ),
            )
        })
        .await;
        assert!(resp.starts_with("HTTP/1.1 403"), "{method}: {resp}");
        assert!(resp.contains("\"forbidden\""), "{resp}");
    }
    let wrong = blocking(move || {
        raw_tcp(
            tcp,
            "GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer read-only-token-0124\r\n\
             Connection: close\r\n\r\n",
        )
    })
    .await;
    assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listener_serves_only_get_metrics() {
    let (server, metrics) = TestServer::start_observable().await;
    let get = |path: &'static str| {
        blocking(move || {
            raw_tcp(metrics, &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
        })
    };
    let ok = get("/metrics").await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.contains("text/plain; version=0.0.4"), "{ok}");
    assert!(ok.contains("\r\n\r\nlb_up 1\n"), "{ok}");
    // The listener's own connections are counted under their own name.
    assert!(ok.contains("lb_api_connections{listener=\"metrics\"} 1"), "{ok}");
    for path in ["/v1/status", "/v1/health", "/v1/history", "/v1/openapi.json", "/", "/metrics/x"] {
        let resp = get(path).await;
        assert!(resp.starts_with("HTTP/1.1 404"), "{path}: {resp}");
    }
    // No change either, token or not.
    let switch = blocking(move || {
        raw_tcp(
            metrics,
            &format!(
                "POST /v1/switch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
                 Content-Type: application/json\r\nContent-Length: 17\r\nConnection: close\r\n\r\n\
                 {{\"pool\":\"pool-b\"}}"
            ),
        )
    })
    .await;
    assert!(switch.starts_with("HTTP/1.1 404"), "{switch}");
    let post = blocking(move || {
        raw_tcp(
            metrics,
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
    })
    .await;
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    assert!(server.fake.requesters.lock().unwrap().is_empty());
    server.stop().await;
}
