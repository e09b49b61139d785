//! The balancer attacked and misused (issue 9): idle API connections, running out of file
//! descriptors, two daemons of one instance, pins removed from under a running daemon, a
//! detached program, native XDP on a veth, a changed `xdp_mode`, a private bpffs under
//! `ip netns exec`, forwarding off. Status fields are read as JSON values, so each test runs
//! (and fails) against a daemon that lacks the fix too.

use lb_tests::{
    e2e::{Setup, SetupOptions, setup, setup_edited, web_vip},
    load::request,
};
use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// `GET /v1/status` as JSON.
fn status(s: &Setup) -> serde_json::Value {
    s.daemon.client().get("/v1/status").expect("status")
}

/// The status's warnings, joined (empty when the field is missing or empty).
fn warnings(s: &Setup) -> String {
    let st = status(s);
    st["warnings"]
        .as_array()
        .map(|w| w.iter().filter_map(|l| l.as_str()).collect::<Vec<_>>().join("\n"))
        .unwrap_or_default()
}

/// Polls `cond` every 50 ms for at most `limit`.
fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

/// The XDP mode the kernel reports for the balancer's interface (`ip -j -d link`): `native`,
/// `generic` or `none`.
fn kernel_mode(s: &Setup) -> String {
    let out = s.topo.balancer().ip(&["-j", "-d", "link", "show", "dev", "eth0"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    match v[0]["xdp"]["mode"].as_u64() {
        Some(1) => "native".into(),
        Some(2) => "generic".into(),
        Some(m) => format!("mode {m}"),
        None => "none".into(),
    }
}

/// Every backend of every pool is up.
fn all_up(st: &serde_json::Value) -> bool {
    st["services"][0]["pools"].as_array().is_some_and(|pools| {
        pools.iter().all(|p| p["backends"].as_array().unwrap().iter().all(|b| b["up"] == true))
    })
}

#[test]
fn a_second_daemon_of_one_instance_is_refused_and_names_the_first() {
    let s = setup("lk", "nat").expect("setup");
    let first = s.daemon.pid().unwrap();
    // Same instance (same pins, same state file) with a socket of its own: without the lock it
    // adopted the first one's maps and served beside it.
    let second_cfg = s.daemon.dir.path().join("second.toml");
    let text = std::fs::read_to_string(s.daemon.config_path()).unwrap();
    std::fs::write(&second_cfg, text.replace("lb.sock", "second.sock")).unwrap();
    let mut cmd = Command::new(s.daemon.daemon_bin());
    cmd.arg("--config").arg(&second_cfg).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = s.topo.spawn_in(s.topo.balancer(), &mut cmd).unwrap();
    let exited = wait_until(Duration::from_secs(10), || child.try_wait().unwrap().is_some());
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(exited, "the second daemon kept running");
    assert!(!out.status.success());
    assert!(stderr.contains("already run by another lb-daemon"), "{stderr}");
    assert!(stderr.contains(&format!("pid {first}")), "names the holder {first}: {stderr}");
    assert!(!s.daemon.dir.path().join("second.sock").exists());
    // The first one is untouched.
    assert!(request(s.topo.client(), web_vip()).is_ok());
    assert!(s.daemon.lbctl(&["switch", "pool-b"]).status.success());
}

/// Detaches the BPF link pinned at `pin` (`BPF_LINK_DETACH`), as `bpftool link detach` does:
/// the interface loses the program while every descriptor of the link stays open.
fn detach_link(pin: &Path) {
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_DETACH: libc::c_long = 34;
    let path = CString::new(pin.as_os_str().as_bytes()).unwrap();
    let mut attr = [0u64; 16];
    attr[0] = path.as_ptr() as u64;
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, attr.as_mut_ptr(), 128) };
    assert!(fd >= 0, "BPF_OBJ_GET {}: {}", pin.display(), std::io::Error::last_os_error());
    let mut attr = [0u64; 16];
    attr[0] = fd as u64;
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_LINK_DETACH, attr.as_mut_ptr(), 128) };
    let err = std::io::Error::last_os_error();
    unsafe { libc::close(fd as i32) };
    assert_eq!(rc, 0, "BPF_LINK_DETACH: {err}");
}

#[test]
fn removed_pins_and_a_detached_program_are_repaired_and_reported() {
    let mut s = setup("pin", "nat").expect("setup");
    assert!(request(s.topo.client(), web_vip()).is_ok());
    // Pins removed under a running daemon: forwarding continues (the daemon holds its links)
    // and the pins come back, so a restarted daemon can still adopt the state.
    std::fs::remove_dir_all(s.daemon.pin_dir()).unwrap();
    assert!(request(s.topo.client(), web_vip()).is_ok(), "forwarding continues without the pins");
    let link_pin = s.daemon.pin_dir().join("links/eth0");
    let pins_back = wait_until(Duration::from_secs(5), || {
        link_pin.exists() && s.daemon.pin_dir().join("maps/SERVICES").exists()
    });
    assert!(pins_back, "pins re-created:\n{}", s.daemon.log());

    // The program detached behind the daemon's back: it notices within seconds, attaches it
    // again and says so in the status, /v1/health and the metrics.
    detach_link(&link_pin);
    assert_eq!(kernel_mode(&s), "none", "the kernel runs no program now");
    let back = wait_until(Duration::from_secs(5), || {
        status(&s)["interfaces"][0]["reattachments"] == 1 && request(s.topo.client(), web_vip()).is_ok()
    });
    assert!(back, "re-attached and forwarding: {}\n{}", status(&s)["interfaces"], s.daemon.log());
    assert_eq!(kernel_mode(&s), "generic");
    let iface = &status(&s)["interfaces"][0];
    assert_eq!(iface["attached"], true);
    assert!(iface["last_reattach"].as_str().unwrap().contains("no XDP program"), "{iface}");
    let health: serde_json::Value = s.daemon.client().get("/v1/health").unwrap();
    assert_eq!((health["ok"].clone(), health["reattachments"].clone()), (true.into(), 1.into()), "{health}");
    let metrics = s.daemon.client().get_text("/metrics").unwrap();
    assert!(metrics.contains("lb_xdp_reattachments_total{interface=\"eth0\"} 1"), "{metrics}");
    assert!(metrics.contains("lb_xdp_attached{interface=\"eth0\",mode=\"generic\"} 1"), "{metrics}");
    assert!(s.daemon.log().contains("XDP program lost"));

    // What was repaired is what the next daemon adopts.
    s.daemon.kill9().unwrap();
    assert!(request(s.topo.client(), web_vip()).is_ok(), "forwarding continues after kill -9");
    s.daemon.spawn(&s.topo).unwrap();
    assert_eq!(status(&s)["adopted"], true);
    assert!(request(s.topo.client(), web_vip()).is_ok());
}

#[test]
fn xdp_mode_is_the_kernels_and_a_changed_mode_applies_on_restart() {
    let mut s = setup("xm", "nat").expect("setup");
    // `auto` on a veth: generic, as the kernel reports it.
    let st = status(&s);
    assert_eq!(st["interfaces"][0]["mode"], "generic", "{}", st["interfaces"]);
    assert_eq!(st["interfaces"][0]["kind"], "veth");
    assert_eq!(kernel_mode(&s), "generic");
    assert!(request(s.topo.client(), web_vip()).is_ok());

    // `native` configured, then a restart: the pinned generic link is replaced by a native one,
    // with a warning that tells how native XDP works on a veth (this topology does it).
    s.daemon.kill9().unwrap();
    let cfg = std::fs::read_to_string(s.daemon.config_path()).unwrap();
    std::fs::write(s.daemon.config_path(), cfg.replacen("[api]", "xdp_mode = \"native\"\n\n[api]", 1))
        .unwrap();
    s.daemon.spawn(&s.topo).unwrap();
    let st = status(&s);
    assert_eq!(st["adopted"], true);
    assert_eq!(kernel_mode(&s), "native");
    assert_eq!(st["interfaces"][0]["mode"], "native");
    let w = warnings(&s);
    assert!(w.contains("native XDP on veth eth0") && w.contains("gro on") && w.contains("tx off"), "{w}");
    assert!(s.daemon.log().contains("native XDP on veth eth0"));
    assert!(request(s.topo.client(), web_vip()).is_ok());

    // And back to generic by a plain restart: the status says what the kernel runs.
    s.daemon.kill9().unwrap();
    let cfg = std::fs::read_to_string(s.daemon.config_path()).unwrap();
    std::fs::write(s.daemon.config_path(), cfg.replace("xdp_mode = \"native\"", "xdp_mode = \"generic\""))
        .unwrap();
    s.daemon.spawn(&s.topo).unwrap();
    assert_eq!(kernel_mode(&s), "generic");
    assert_eq!(status(&s)["interfaces"][0]["mode"], "generic");
    assert!(warnings(&s).is_empty(), "{}", warnings(&s));
    assert!(request(s.topo.client(), web_vip()).is_ok());
}

#[test]
fn forwarding_off_is_a_warning_with_its_fix_until_reload_sees_it_on() {
    let s = setup("fw", "nat").expect("setup");
    assert!(warnings(&s).is_empty(), "{}", warnings(&s));
    s.topo.balancer().sysctl("net.ipv4.ip_forward", "0").unwrap();
    s.daemon.lbctl_ok(&["reload"]);
    let w = warnings(&s);
    assert!(
        w.contains("net.ipv4.conf.eth0.forwarding=0") && w.contains("sysctl -w net.ipv4.ip_forward=1"),
        "{w}"
    );
    assert!(s.daemon.log().contains("IPv4 forwarding is off on eth0"));
    s.topo.balancer().sysctl("net.ipv4.ip_forward", "1").unwrap();
    s.daemon.lbctl_ok(&["reload"]);
    assert!(warnings(&s).is_empty(), "{}", warnings(&s));
    assert!(request(s.topo.client(), web_vip()).is_ok());
}

#[test]
fn under_ip_netns_exec_the_private_bpffs_is_warned_about() {
    let mut s = setup("bfs", "nat").expect("setup");
    assert!(!warnings(&s).contains("bpffs"), "a daemon started with setns(2) uses the host's bpffs");
    // Take this daemon out of the path, then start the same config the way the README warns
    // against.
    s.daemon.lbctl_ok(&["shutdown", "--detach"]);
    s.daemon.wait_exit(Duration::from_secs(10)).unwrap();
    let log = s.daemon.dir.path().join("netns-exec.log");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", s.topo.balancer().name()])
        .arg(s.daemon.daemon_bin())
        .arg("--config")
        .arg(s.daemon.config_path())
        .env("LB_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut child = cmd.spawn().unwrap();
    let up = wait_until(Duration::from_secs(20), || {
        s.daemon.client().get::<serde_json::Value>("/v1/health").is_ok()
    });
    let w = if up { warnings(&s) } else { String::new() };
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(up, "daemon under ip netns exec did not answer:\n{text}");
    assert!(w.contains("bpffs at /sys/fs/bpf is not the host's") && w.contains("nsenter --net="), "{w}");
    assert!(text.contains("is not the host's"), "{text}");
    assert!(!s.daemon.pin_dir().exists(), "its pins were never in the host's bpffs");
}

#[test]
fn idle_api_connections_beyond_the_cap_leave_the_api_and_health_checks_working() {
    const TOKEN: &str = "idle-test-token-0123456789";
    let api = format!("[api]\ntcp = \"127.0.0.1:9931\"\ntoken = \"{TOKEN}\"\n");
    // 256 descriptors: 400 idle connections would take them all.
    let s = setup_edited("idl", &SetupOptions::new("nat"), Some(256), |c| c.replacen("[api]\n", &api, 1))
        .expect("setup");
    let conns = s
        .topo
        .balancer()
        .run_in(|| {
            (0..400)
                .filter_map(|_| {
                    std::net::TcpStream::connect_timeout(
                        &"127.0.0.1:9931".parse().unwrap(),
                        Duration::from_secs(1),
                    )
                    .ok()
                })
                .collect::<Vec<_>>()
        })
        .unwrap();
    assert!(conns.len() >= 300, "opened {}", conns.len());
    // Ten health-check intervals with the connections open.
    std::thread::sleep(Duration::from_secs(2));
    let st: Result<serde_json::Value, _> = s.daemon.client().get("/v1/status");
    let vip = request(s.topo.client(), web_vip());
    drop(conns);
    let st = st.expect("the Unix socket answers");
    assert!(all_up(&st), "backends stay up: {}", st["services"][0]["pools"]);
    assert!(vip.is_ok(), "VIP traffic flows: {vip:?}");
    assert!(!s.daemon.log().contains("is down after"), "{}", s.daemon.log());
    let metrics = s.daemon.client().get_text("/metrics").unwrap();
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("lb_api_connections_closed_total{listener=\"tcp\",reason=\"limit\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(refused > 0, "connections beyond the cap were refused: {metrics}");
}

#[test]
fn health_checks_survive_running_out_of_file_descriptors() {
    let s = setup("emf", "nat").expect("setup");
    let pid = s.daemon.pid().unwrap();
    // The lowest free descriptor number as the limit: every new descriptor fails with EMFILE.
    let open: std::collections::BTreeSet<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let lowest_free = (0..).find(|n| !open.contains(n)).unwrap();
    let prlimit = |limit: u32| {
        let out = Command::new("prlimit")
            // The soft limit only: raising a hard limit again needs CAP_SYS_RESOURCE.
            .args(["--pid", &pid.to_string(), &format!("--nofile={limit}:")])
            .output()
            .unwrap();
        assert!(out.status.success(), "prlimit: {}", String::from_utf8_lossy(&out.stderr));
    };
    prlimit(lowest_free);
    // Ten health-check intervals without descriptors; the data plane does not need any.
    std::thread::sleep(Duration::from_secs(2));
    let vip = request(s.topo.client(), web_vip());
    prlimit(4096);
    let log = s.daemon.log();
    assert!(!log.contains("is down after"), "no backend was taken down:\n{log}");
    assert!(vip.is_ok(), "VIP traffic flows: {vip:?}");
    assert!(log.contains("the daemon's own failure"), "the checker's failure is logged:\n{log}");
    assert!(wait_until(Duration::from_secs(5), || s
        .daemon
        .client()
        .get::<serde_json::Value>("/v1/health")
        .is_ok()));
    assert!(all_up(&status(&s)));
    let metrics = s.daemon.client().get_text("/metrics").unwrap();
    let local: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("lb_health_check_local_errors_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(local > 0, "counted: {metrics}");
}

#[test]
fn a_stalled_request_body_gets_408_and_the_connection_is_closed() {
    use std::io::{Read, Write};
    let s = setup("stl", "nat").expect("setup");
    let mut conn = std::os::unix::net::UnixStream::connect(s.daemon.socket()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // 10 of the 100 bytes announced, then nothing: before the fix this stayed open for ever.
    conn.write_all(b"POST /v1/switch HTTP/1.1\r\nHost: lb\r\nContent-Length: 100\r\n\r\n{\"pool\":\"p")
        .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "after {:?}: {answer:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(15), "answered and closed within the body timeout");
    assert!(s.daemon.status().is_ok());
}
