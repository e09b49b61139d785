//! The `[fleet]` table's TLS files and credentials against a real etcd (Debian's `etcd-server`)
//! with client TLS (certificates required) and authentication enabled, all made by the test:
//! certificates by the `openssl` command line in a temporary directory, etcd in the balancer's
//! namespace on its loopback, users and roles through etcd's API. A daemon given the CA, its
//! client certificate and key, a user and its password joins the fleet and switches; the same
//! config with a wrong password or the wrong CA fails `lb-daemon --check`, naming the setting.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use etcd_client::{Certificate, Client, ConnectOptions, Identity, Permission, TlsOptions};
use lb_tests::daemon::{LbDaemon, ServiceSpec, config_toml};
use lb_tests::etcd::{Etcd, TestCerts, make_certs};
use lb_tests::netns::NetNs;
use lb_tests::topology::{BackendSpec, LB_IFACE, Topology, TopologyOptions, vip};

const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;
const USER: &str = "lb";
const PASSWORD: &str = "correct horse battery";

/// Users, a role with read-write on `/lb/`, then authentication on (etcd wants a `root` user
/// with the `root` role first), through a client with the CA and the client certificate.
fn enable_auth(ns: &NetNs, endpoint: &str, certs: &TestCerts) {
    let read = |p: &Path| std::fs::read(p).unwrap();
    let tls = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(read(&certs.ca)))
        .identity(Identity::from_pem(read(&certs.client_cert), read(&certs.client_key)));
    let options = ConnectOptions::new().with_tls(tls).with_connect_timeout(Duration::from_secs(5));
    let endpoint = endpoint.to_owned();
    ns.run_in(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let mut c = Client::connect([endpoint], Some(options)).await.expect("etcd over TLS");
            c.user_add("root", "root-password", None).await.unwrap();
            c.user_grant_role("root", "root").await.unwrap();
            c.role_add("lb-rw").await.unwrap();
            c.role_grant_permission("lb-rw", Permission::read_write("/lb/").with_prefix()).await.unwrap();
            c.user_add(USER, PASSWORD, None).await.unwrap();
            c.user_grant_role(USER, "lb-rw").await.unwrap();
            c.auth_enable().await.unwrap();
        });
    })
    .expect("in the balancer's namespace");
}

/// The `[fleet]` table with TLS files and credentials (`password_file` written next to it).
fn fleet_table(dir: &Path, endpoint: &str, ca: &Path, certs: &TestCerts, password: &str) -> String {
    let pw = dir.join(format!("password-{}", password.len()));
    std::fs::write(&pw, format!("{password}\n")).unwrap();
    format!(
        "\n[fleet]\ncluster = \"tls{}\"\nhost = \"lb1\"\nendpoints = [\"{endpoint}\"]\nca_file = \"{}\"\n\
         cert_file = \"{}\"\nkey_file = \"{}\"\nuser = \"{USER}\"\npassword_file = \"{}\"\n",
        std::process::id(),
        ca.display(),
        certs.client_cert.display(),
        certs.client_key.display(),
        pw.display()
    )
}

/// `lb-daemon --config <path> --check` inside the balancer's namespace (it reaches etcd there).
fn check(topo: &Topology, daemon: &LbDaemon, config: &Path) -> std::process::Output {
    Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", topo.balancer().name()))
        .arg(daemon.daemon_bin())
        .arg("--config")
        .arg(config)
        .arg("--check")
        .output()
        .expect("running lb-daemon --check")
}

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn tls_files_and_credentials_reach_an_etcd_with_tls_and_auth_and_wrong_ones_are_named() {
    let specs = vec![
        BackendSpec::new("a1", Ipv4Addr::new(10, 77, 2, 11), 80),
        BackendSpec::new("a2", Ipv4Addr::new(10, 77, 2, 12), 80),
        BackendSpec::new("b1", Ipv4Addr::new(10, 77, 2, 21), 80),
        BackendSpec::new("b2", Ipv4Addr::new(10, 77, 2, 22), 80),
    ];
    let addrs: Vec<SocketAddr> = specs.iter().map(BackendSpec::socket_addr).collect();
    let mut opts = TopologyOptions::new(specs);
    opts.dsr_vips = vec![vip(1)];
    let mut topo = Topology::new("ftls", opts).expect("topology");
    for name in ["a1", "a2", "b1", "b2"] {
        topo.start_backend(name).unwrap();
    }
    let certs_dir = tempfile::tempdir().unwrap();
    let certs = make_certs(certs_dir.path(), LOOPBACK).expect("certificates");
    let etcd = Etcd::start_tls(topo.balancer(), LOOPBACK, certs.etcd_tls()).expect("etcd with TLS");
    let endpoint = etcd.endpoint();
    assert!(endpoint.starts_with("https://"), "{endpoint}");
    enable_auth(topo.balancer(), &endpoint, &certs);

    let fleet = fleet_table(certs_dir.path(), &endpoint, &certs.ca, &certs, PASSWORD);
    let daemon = LbDaemon::start(&topo, |instance, dir| {
        config_toml(
            instance,
            dir,
            LB_IFACE,
            &[ServiceSpec {
                name: "web",
                vip: SocketAddr::new(vip(1).into(), 80),
                mode: "dsr",
                pools: vec![("pool-a", addrs[..2].to_vec()), ("pool-b", addrs[2..].to_vec())],
                active: "pool-a",
            }],
        ) + &fleet
    })
    .expect("daemon with [fleet] over TLS and authentication");

    // The right settings pass the check, reaching etcd.
    let out = check(&topo, &daemon, &daemon.config_path());
    assert!(out.status.success(), "{}", text(&out));

    // It joins the fleet: connected and in sync (bounded wait), then a fleet switch succeeds.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status: serde_json::Value =
            serde_json::from_str(&daemon.lbctl_ok(&["-o", "json", "status"])).expect("status JSON");
        if status["fleet"]["connected"] == true && status["fleet"]["in_sync"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "not in sync with etcd:\n{status:#}\n{}", daemon.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = daemon.lbctl_ok(&["switch", "pool-b", "--wait-fleet", "10s"]);
    assert!(out.contains("applied on every live host (lb1)"), "{out}");
    let history: serde_json::Value =
        serde_json::from_str(&daemon.lbctl_ok(&["-o", "json", "history"])).expect("history JSON");
    let last = history.as_array().and_then(|h| h.last()).expect("an entry").clone();
    assert_eq!(last["to"]["pool"], "pool-b", "{history:#}");
    assert_eq!(last["fleet"]["applied"][0]["host"], "lb1", "{history:#}");

    // A wrong password, then the wrong CA: the check fails and names what to fix.
    let base = std::fs::read_to_string(daemon.config_path()).unwrap();
    let (main, _) = base.split_once("\n[fleet]").unwrap();
    let wrong = |name: &str, fleet: String| {
        let path = daemon.dir.path().join(name);
        std::fs::write(&path, format!("{main}{fleet}")).unwrap();
        let out = check(&topo, &daemon, &path);
        assert!(!out.status.success(), "{name} passed the check: {}", text(&out));
        text(&out)
    };
    let msg =
        wrong("wrong-password.toml", fleet_table(certs_dir.path(), &endpoint, &certs.ca, &certs, "nope"));
    eprintln!("wrong password: {msg}");
    assert!(msg.contains("fleet.user and fleet.password_file"), "{msg}");
    let msg =
        wrong("wrong-ca.toml", fleet_table(certs_dir.path(), &endpoint, &certs.other_ca, &certs, PASSWORD));
    eprintln!("wrong CA: {msg}");
    assert!(msg.contains("fleet.ca_file"), "{msg}");
    // The running daemon is unaffected by the checks.
    assert!(daemon.lbctl_ok(&["status"]).contains("pool-b"));
    drop(daemon);
    drop(etcd);
}
