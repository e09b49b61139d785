//! The state directory fills up (issue 9 item 8): a switch whose desired state cannot be
//! written is refused (lbctl exits 1) and traffic stays where it was; once there is room, a
//! plain retry switches, and a restart comes back to it with the switch in the history.

use lb_tests::{
    e2e::{in_pool_a, in_pool_b, setup, web_vip},
    load::request,
};
use std::{
    ffi::CString,
    fs,
    io::Write,
    path::{Path, PathBuf},
};

/// A small tmpfs mounted over a folder, holding copies of the files that were there; unmounted
/// on drop (also when the test fails), which brings the original files back.
struct SmallFs(PathBuf);

impl SmallFs {
    fn over(dir: &Path, bytes: usize) -> Self {
        let saved: Vec<(PathBuf, Vec<u8>)> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .map(|p| (p.clone(), fs::read(&p).unwrap()))
            .collect();
        let target = CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
        let opts = CString::new(format!("size={bytes},mode=0700")).unwrap();
        let r = unsafe {
            libc::mount(c"tmpfs".as_ptr(), target.as_ptr(), c"tmpfs".as_ptr(), 0, opts.as_ptr().cast())
        };
        assert_eq!(r, 0, "mounting a tmpfs on {}: {}", dir.display(), std::io::Error::last_os_error());
        let guard = SmallFs(dir.to_path_buf());
        for (path, data) in saved {
            fs::write(path, data).unwrap();
        }
        guard
    }

    /// Fills the file system; returns the filler's path.
    fn fill(&self) -> PathBuf {
        let path = self.0.join("filler");
        let mut f = fs::File::create(&path).unwrap();
        let block = vec![0u8; 4096];
        for _ in 0..100_000 {
            if f.write_all(&block).is_err() {
                return path;
            }
        }
        panic!("{} never filled up", self.0.display());
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let target = CString::new(self.0.as_os_str().as_encoded_bytes()).unwrap();
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

#[test]
fn a_switch_on_a_full_state_disk_is_refused_then_a_retry_persists_and_applies_it() {
    let mut s = setup("sfull", "nat").expect("setup");
    let state_dir = s.daemon.dir.path().join("state");
    let state_file = state_dir.join(format!("{}.state.json", s.daemon.instance));
    assert!(state_file.exists());
    let small = SmallFs::over(&state_dir, 256 * 1024);
    let filler = small.fill();

    let out = s.daemon.lbctl(&["switch", "pool-b"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit 1 when the state cannot be written: {stderr}");
    assert!(stderr.contains("nothing changed"), "{stderr}");
    assert!(in_pool_a(&request(s.topo.client(), web_vip()).unwrap()), "traffic stays on pool-a");
    let web = &s.daemon.status().unwrap().services[0];
    assert_eq!(web.active.to_string(), "pool-a");

    // Room again: the plain retry switches and persists.
    fs::remove_file(&filler).unwrap();
    let said = s.daemon.lbctl_ok(&["switch", "pool-b"]);
    assert!(said.contains("pool-a -> pool-b"), "{said}");
    assert!(in_pool_b(&request(s.topo.client(), web_vip()).unwrap()));
    let text = fs::read_to_string(&state_file).unwrap();
    assert!(text.contains("\"pool-b\""), "{text}");

    // A restart comes back to the switch, recorded in the history. The daemon reads the state
    // from the small file system, which holds the latest state.
    s.daemon.kill9().unwrap();
    s.daemon.spawn(&s.topo).expect("restart");
    let web = &s.daemon.status().unwrap().services[0];
    assert_eq!(web.active.to_string(), "pool-b");
    assert!(in_pool_b(&request(s.topo.client(), web_vip()).unwrap()));
    let history = s.daemon.lbctl_ok(&["history"]);
    assert!(history.contains("pool-b"), "{history}");
    drop(small);
}

#[test]
fn a_corrupt_dataplane_options_file_stops_a_restart_with_a_clear_error() {
    let mut s = setup("scorr", "nat").expect("setup");
    let file = s.daemon.dir.path().join("state").join(format!("{}.dataplane.json", s.daemon.instance));
    let text = fs::read_to_string(&file).unwrap();
    s.daemon.kill9().unwrap();
    fs::write(&file, &text[..text.len() / 2]).unwrap();
    let e = s.daemon.spawn(&s.topo).unwrap_err().to_string();
    assert!(e.contains("is corrupt") && e.contains(".dataplane.json"), "{e}");
    // Forwarding goes on from the pins meanwhile.
    assert!(in_pool_a(&request(s.topo.client(), web_vip()).unwrap()));
    // Repaired: the daemon adopts again.
    fs::write(&file, &text).unwrap();
    s.daemon.spawn(&s.topo).expect("restart");
    assert!(s.daemon.status().unwrap().adopted);
}
