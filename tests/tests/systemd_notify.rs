//! The unit is `Type=notify`: lb-daemon tells the service manager READY=1 only once the XDP
//! program is attached and the API answers, and STOPPING=1 when it starts to exit. Here the
//! test plays systemd: it binds the datagram socket NOTIFY_SOCKET names and reads what arrives.

use lb_daemon::{
    api::client::{Client, Endpoint},
    dataplane::{Dataplane, PinDir},
};
use lb_tests::{
    daemon::{ServiceSpec, config_toml},
    e2e::web_vip,
    topology::{BackendSpec, LB_IFACE, Topology, TopologyOptions, find_binary},
};
use std::{
    net::Ipv4Addr,
    os::unix::net::UnixDatagram,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

/// Kills the daemon (if still running) and removes its pins, also when an assertion failed.
struct DaemonGuard {
    child: Option<Child>,
    pins: PathBuf,
}

impl Drop for DaemonGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Dataplane::remove_pins(&PinDir(self.pins.clone()));
    }
}

/// The next notification datagram, as text (fails after the socket's read timeout).
fn next_message(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("a notification from lb-daemon within 30 s");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn ready_is_sent_after_attach_and_stopping_on_exit() {
    let specs = vec![BackendSpec::new("a1", Ipv4Addr::new(10, 77, 2, 11), 8080)];
    let backend = specs[0].socket_addr_in(false);
    let mut topo = Topology::new("ntf", TopologyOptions::new(specs)).expect("topology");
    topo.start_backend("a1").expect("backend");
    let dir = tempfile::tempdir().unwrap();
    let instance = format!("lbn{}", std::process::id());
    let config = config_toml(
        &instance,
        dir.path(),
        LB_IFACE,
        &[ServiceSpec {
            name: "web",
            vip: web_vip(),
            mode: "nat",
            pools: vec![("pool-a", vec![backend])],
            active: "pool-a",
        }],
    );
    std::fs::write(dir.path().join("lb.toml"), config).unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
    let mut cmd = Command::new(find_binary("lb-daemon", "LB_DAEMON_BIN").unwrap());
    cmd.arg("--config")
        .arg(dir.path().join("lb.toml"))
        .env("NOTIFY_SOCKET", &notify_path)
        .env("LB_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(log);
    let mut daemon = DaemonGuard {
        child: Some(topo.spawn_in(topo.balancer(), &mut cmd).expect("lb-daemon")),
        pins: PathBuf::from("/sys/fs/bpf").join(&instance),
    };
    let daemon_log = || std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();

    // Nothing but READY=1 may come first: the daemon has nothing else to say while starting.
    let first = next_message(&notify);
    assert!(first.lines().any(|l| l == "READY=1"), "first notification {first:?}\n{}", daemon_log());
    assert!(first.lines().any(|l| l.starts_with("STATUS=forwarding")), "{first:?}");
    // At the moment READY=1 arrived the API answers and the kernel runs the program: asked at
    // once, with no retry, so a READY sent before either would fail here.
    let client =
        Client::new(Endpoint::Unix(dir.path().join("lb.sock")), "lb-tests".into(), Duration::from_secs(5));
    let status = client.get::<serde_json::Value>("/v1/status");
    assert!(status.is_ok(), "API not answering when READY=1 arrived: {status:?}\n{}", daemon_log());
    let link = topo.balancer().ip(&["-j", "-d", "link", "show", "dev", LB_IFACE]).unwrap();
    let link: serde_json::Value = serde_json::from_str(&link).unwrap();
    let prog_id = &link[0]["xdp"]["prog"]["id"];
    assert!(prog_id.as_u64().is_some_and(|id| id > 0), "no XDP program on {LB_IFACE} at READY=1: {link}");

    // SIGTERM: STOPPING=1, then a clean exit (the program stays attached; the guard removes it).
    let pid = daemon.child.as_ref().unwrap().id();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    let stopping = next_message(&notify);
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}\n{}", daemon_log());
    let status = daemon.child.take().unwrap().wait().unwrap();
    assert!(status.success(), "lb-daemon exited with {status}\n{}", daemon_log());
}
