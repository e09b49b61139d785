//! The Unix listener: a socket file with mode 0600 from the start, a stale one cleared, and
//! only our own file removed on exit.

use super::*;

/// A bound Unix listener and the identity of its socket file, so that only our own file is
/// removed on exit (not one a newer daemon put there meanwhile).
pub(super) struct UnixSocket {
    pub(super) listener: UnixListener,
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
pub(super) fn bind_unix(path: &Path) -> anyhow::Result<UnixSocket> {
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
pub(super) fn bind_private_unix(path: &Path) -> io::Result<std::os::unix::net::UnixListener> {
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
pub(super) const SUN_PATH_LEN: usize = 108;
