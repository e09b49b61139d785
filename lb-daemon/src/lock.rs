//! One daemon per instance: an exclusive `flock` on the instance's pin folder
//! (`<bpffs>/<instance>`) and on a lock file beside its state file
//! (`<state_dir>/<instance>.lock`), taken before anything is adopted or written. A second daemon
//! with the same instance name (same pins, or same state file) exits at once with an error that
//! names the holder's pid, instead of adopting the first one's maps and rewriting them.
//!
//! The locks go with the process (also on `kill -9`): nothing to clean up.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
};

/// Why the instance could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error(
        "instance {instance} is already run by another lb-daemon ({holder}, holding {path}); stop it \
         first (`lbctl shutdown`) or give this one another instance name"
    )]
    Held {
        /// Instance name.
        instance: String,
        /// `pid 1234` or `pid unknown`.
        holder: String,
        /// The locked file or folder.
        path: PathBuf,
    },
    /// The lock file or folder could not be opened or locked.
    #[error("locking {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// The held locks of one instance; dropping it releases them.
#[derive(Debug)]
pub struct InstanceLock {
    _held: Vec<Flock<File>>,
}

impl InstanceLock {
    /// Locks `state_lock` (a file, created; our pid is written into it) and then `pin_dir` (a
    /// folder, created), both exclusively and without waiting.
    pub fn acquire(instance: &str, state_lock: &Path, pin_dir: &Path) -> Result<Self, LockError> {
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| LockError::Io { path, source }
        };
        if let Some(dir) = state_lock.parent() {
            fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(state_lock)
            .map_err(io_err(state_lock))?;
        let mut file = lock(file, instance, state_lock)?;
        file.set_len(0).map_err(io_err(state_lock))?;
        writeln!(file, "{}", std::process::id()).map_err(io_err(state_lock))?;

        fs::create_dir_all(pin_dir).map_err(io_err(pin_dir))?;
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(pin_dir)
            .map_err(io_err(pin_dir))?;
        let dir = lock(dir, instance, pin_dir)?;
        Ok(Self { _held: vec![file, dir] })
    }
}

/// `flock(LOCK_EX | LOCK_NB)`; a held lock becomes [`LockError::Held`] naming the holder.
fn lock(file: File, instance: &str, path: &Path) -> Result<Flock<File>, LockError> {
    let (file, errno) = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(held) => return Ok(held),
        Err(failed) => failed,
    };
    if errno != Errno::EWOULDBLOCK {
        return Err(LockError::Io { path: path.to_owned(), source: errno.into() });
    }
    let holder = file
        .metadata()
        .ok()
        .and_then(|m| holder_pid(&fs::read_to_string("/proc/locks").unwrap_or_default(), m.dev(), m.ino()))
        .map_or_else(|| "pid unknown".to_owned(), |pid| format!("pid {pid}"));
    Err(LockError::Held { instance: instance.to_owned(), holder, path: path.to_owned() })
}

/// The pid holding a `flock` on the file (`dev`, `ino`), from the text of `/proc/locks`
/// (`1: FLOCK  ADVISORY  WRITE 1234 00:2a:5678 0 EOF`; a waiting lock has `->` first and is
/// skipped).
fn holder_pid(proc_locks: &str, dev: u64, ino: u64) -> Option<u32> {
    let (major, minor) = (libc::major(dev) as u64, libc::minor(dev) as u64);
    proc_locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) != Some(&"FLOCK") {
            return None;
        }
        let pid = fields.get(4)?.parse().ok()?;
        let mut id = fields.get(5)?.split(':');
        let maj = u64::from_str_radix(id.next()?, 16).ok()?;
        let min = u64::from_str_radix(id.next()?, 16).ok()?;
        let i: u64 = id.next()?.parse().ok()?;
        (maj == major && min == minor && i == ino).then_some(pid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_locks_lines_name_the_holder() {
        let text = "1: FLOCK  ADVISORY  WRITE 4242 00:2a:5678 0 EOF\n\
                    1: -> FLOCK  ADVISORY  WRITE 99 00:2a:5678 0 EOF\n\
                    2: POSIX  ADVISORY  WRITE 77 fd:01:9 0 EOF\n";
        let dev = libc::makedev(0, 0x2a);
        assert_eq!(holder_pid(text, dev, 5678), Some(4242));
        assert_eq!(holder_pid(text, dev, 9), None);
        assert_eq!(holder_pid(text, libc::makedev(0xfd, 1), 9), None, "POSIX locks are not ours");
    }

    #[test]
    fn a_second_lock_of_one_instance_is_refused_with_the_pid() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state/x.lock");
        let pins = dir.path().join("pins/x");
        let first = InstanceLock::acquire("x", &state, &pins).expect("first lock");
        assert_eq!(fs::read_to_string(&state).unwrap().trim(), std::process::id().to_string());
        // flock locks belong to the open file: a second open in this process conflicts too.
        let err = InstanceLock::acquire("x", &state, &pins).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("instance x is already run"), "{text}");
        assert!(text.contains(&format!("pid {}", std::process::id())), "{text}");
        // Another state file but the same pins: refused on the pin folder.
        let err = InstanceLock::acquire("x", &dir.path().join("other/x.lock"), &pins).unwrap_err();
        assert!(matches!(err, LockError::Held { ref path, .. } if path == &pins), "{err}");
        drop(first);
        InstanceLock::acquire("x", &state, &pins).expect("free again once the holder is gone");
    }
}
