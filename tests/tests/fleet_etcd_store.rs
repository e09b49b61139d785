//! The fleet's etcd store ([`EtcdStore`]) against a real etcd (Debian's `etcd-server`), started
//! by the test inside a network namespace of its own (etcd and its clients talk over that
//! namespace's loopback; nothing leaves it) with its data in a temporary directory, killed on
//! drop. Checks what the fleet relies on: a change is one transaction; of two writers comparing
//! the same revision exactly one wins; a watch on another connection sees the change; a leased
//! key is visible to the others; an unreachable etcd answers `Unavailable` (the request timeout
//! bounds the call).

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use lb_daemon::fleet::etcd::client::EtcdStore;
use lb_daemon::fleet::etcd::config::FleetConfig;
use lb_daemon::fleet::etcd::store::{Compare, DesiredStore, Event, StoreError, Txn};
use lb_tests::netns::NetNs;

const ENDPOINT: &str = "http://127.0.0.1:2379";

/// etcd in a namespace; killed (and waited for) on drop.
struct Etcd {
    child: Child,
    dir: tempfile::TempDir,
}

impl Etcd {
    fn start(ns: &NetNs) -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
        let program = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .expect("etcd not found: install Debian's etcd-server (cargo xtask test does)");
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.name()))
            .arg(program)
            .args(["--name", "t", "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                ENDPOINT,
                "--advertise-client-urls",
                ENDPOINT,
                "--listen-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-advertise-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-cluster",
                "t=http://127.0.0.1:2380",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting etcd");
        let etcd = Etcd { child, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        let up = ns
            .run_in(|| {
                loop {
                    if TcpStream::connect("127.0.0.1:2379").is_ok() {
                        return true;
                    }
                    if Instant::now() > deadline {
                        return false;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
            .unwrap();
        assert!(up, "etcd did not listen within 20 s; its log:\n{}", etcd.log());
        etcd
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

fn config() -> FleetConfig {
    let text = format!(
        "interfaces = [\"eth0\"]\n[[services]]\nname = \"web\"\nvips = [\"192.0.2.10:80\"]\nmode = \"dsr\"\n\
         active = \"a\"\n[services.pools.a]\nbackends = [\"10.0.1.1:80\"]\n\
         [fleet]\ncluster = \"t\"\nhost = \"h\"\nendpoints = [\"{ENDPOINT}\"]\ndial_timeout = \"2s\"\n\
         lease_ttl = \"1s\"\n"
    );
    lb_daemon::config::Config::from_toml_str(&text).unwrap().fleet.unwrap()
}

/// A runtime and two independent stores (two hosts' connections).
fn stores() -> (tokio::runtime::Runtime, EtcdStore, EtcdStore) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let a = EtcdStore::new(&config(), rt.handle().clone()).unwrap();
    let b = EtcdStore::new(&config(), rt.handle().clone()).unwrap();
    (rt, a, b)
}

#[test]
fn transactions_races_watches_leases_and_loss_against_a_real_etcd() {
    let ns = NetNs::new("etcdst").unwrap();
    let mut etcd = Etcd::start(&ns);
    ns.run_in(|| {
        let (rt, a, b) = stores();
        let key = "/lb/t/services/web";
        // etcd listens before it has elected itself leader: wait (bounded) until it answers.
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Err(e) = a.get(key) {
            assert!(Instant::now() < deadline, "etcd did not answer within 20 s: {e}");
            std::thread::sleep(Duration::from_millis(100));
        }
        // One change = one transaction: both keys at one new revision, only if the key is absent.
        let txn = Txn {
            compares: vec![Compare::ModRevision(key.into(), 0)],
            puts: vec![(key.into(), "v1".into()), ("/lb/t/history/1".into(), "h1".into())],
        };
        let (_, before) = a.get(key).unwrap();
        let rev = a.commit(&txn).unwrap().expect("the first write wins");
        assert_eq!(rev, before + 1, "one revision for the whole transaction");
        let (kv, _) = b.get(key).unwrap();
        assert_eq!(kv.as_ref().map(|kv| (kv.value.as_str(), kv.mod_revision)), Some(("v1", rev)));
        assert_eq!(b.get("/lb/t/history/1").unwrap().0.unwrap().mod_revision, rev);
        // The same compare again fails and writes nothing.
        assert_eq!(a.commit(&txn).unwrap(), None);
        assert_eq!(b.get(key).unwrap().0.unwrap().mod_revision, rev);

        // A watch on the other connection, from the next revision.
        let mut feed = b.watch("/lb/t/", rev + 1).unwrap();

        // Two writers comparing the same revision at once: exactly one wins, every round.
        let (a, b) = (Arc::new(a), Arc::new(b));
        let mut current = rev;
        for round in 0..10 {
            let barrier = Arc::new(Barrier::new(2));
            let writers: Vec<_> = [a.clone(), b.clone()]
                .into_iter()
                .enumerate()
                .map(|(i, s)| {
                    let barrier = barrier.clone();
                    let txn = Txn {
                        compares: vec![Compare::ModRevision(key.into(), current)],
                        puts: vec![(key.into(), format!("round {round} writer {i}"))],
                    };
                    std::thread::spawn(move || {
                        barrier.wait();
                        s.commit(&txn).unwrap()
                    })
                })
                .collect();
            let results: Vec<Option<i64>> = writers.into_iter().map(|w| w.join().unwrap()).collect();
            let won: Vec<i64> = results.iter().flatten().copied().collect();
            assert_eq!(won.len(), 1, "round {round}: {results:?}");
            current = won[0];
        }

        // The watch saw every winning write, in order, ending with the last one.
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while seen.len() < 10 && Instant::now() < deadline {
            if let Some(events) = feed.next(Duration::from_millis(200)).unwrap() {
                seen.extend(events.into_iter().filter(|e| e.key() == key));
            }
        }
        assert_eq!(seen.len(), 10, "{seen:?}");
        assert!(matches!(seen.last(), Some(Event::Put(kv)) if kv.mod_revision == current), "{seen:?}");

        // A leased key is seen by the other connection, and so is a key put with it (a host's
        // status and its applied marks), at the same revision; the lease renews.
        let (status, mark) = ("/lb/t/hosts/h1", "/lb/t/history/1/applied/h1");
        let rev = a.put_leased(status, "{}", &[(mark.into(), "m".into())]).unwrap();
        let at = |k: &str| b.get(k).unwrap().0.map(|kv| kv.mod_revision);
        assert_eq!((at(status), at(mark)), (Some(rev), Some(rev)));
        assert!(a.keep_alive().unwrap());
        // Not renewed for longer than its TTL (1 s): the status is gone, the mark stays, and the
        // next write takes a new lease instead of failing on the expired one.
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!((at(status), at(mark)), (None, Some(rev)));
        let rev = a.put_leased(status, "{}", &[]).unwrap();
        assert_eq!(at(status), Some(rev));
        drop(rt);
    })
    .unwrap();

    // etcd gone: a bounded Unavailable, not a hang.
    etcd.kill();
    ns.run_in(|| {
        let (_rt, a, _b) = stores();
        let e = a.get("/lb/t/services/web").unwrap_err();
        assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
    })
    .unwrap();
}
