//! The Unix-only parts: private folders, sockets only this user can reach, and the peer's uid.
//! (A Windows port replaces this module: named pipes with an owner-only ACL.)

use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixStream};

use crate::SidecarError;

/// This process's uid.
#[must_use]
pub fn uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// The peer's description for logs (`pid N`) when it runs as this user; `None` (and a warning)
/// for another user or an unreadable peer.
pub(crate) fn peer_is_us(stream: &UnixStream) -> Option<String> {
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == uid() => Some(
            cred.pid()
                .map_or_else(|| "socket".to_owned(), |pid| format!("pid {pid}")),
        ),
        Ok(cred) => {
            tracing::warn!(
                peer_uid = cred.uid(),
                "refused a connection from another user"
            );
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the peer's credentials; refused");
            None
        }
    }
}

/// Makes sure `dir` is a folder of this user that nobody else can enter: created 0700 when
/// missing; a link, another user's folder or an open one is refused with what to do.
///
/// # Example
/// ```no_run
/// shiftkey_sidecar::unix::ensure_private_dir(std::path::Path::new("/run/user/1000/shiftkey"))?;
/// # Ok::<(), shiftkey_sidecar::SidecarError>(())
/// ```
pub fn ensure_private_dir(dir: &Path) -> Result<(), SidecarError> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
    if std::fs::symlink_metadata(dir).is_err() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| SidecarError::io(format!("cannot create {}", dir.display()), e))?;
    }
    // lstat: a link is refused, not followed (another user could point it anywhere).
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| SidecarError::io(format!("cannot read {}", dir.display()), e))?;
    if meta.file_type().is_symlink() {
        return Err(SidecarError::path(
            dir,
            "is a symbolic link; point the configuration at the real folder",
        ));
    }
    if !meta.is_dir() {
        return Err(SidecarError::path(dir, "is not a folder"));
    }
    let uid = uid();
    if meta.uid() != uid {
        return Err(SidecarError::path(
            dir,
            format!(
                "belongs to uid {}, not to this user (uid {uid}); run `chown {uid} {}` or use another folder",
                meta.uid(),
                dir.display()
            ),
        ));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SidecarError::path(
            dir,
            format!(
                "is open to other users (mode {mode:o}); run `chmod 700 {}`",
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// Binds a Unix socket in a private folder (ours, 0700, not a link). The socket is created 0600
/// with no window in which it is more open (the umask is 0177 around `bind`). A stale socket of
/// ours (nobody answers) is replaced; anything else at the path is refused, never removed.
/// `setting` names the configuration key in errors.
///
/// # Example
/// ```no_run
/// # async fn demo() -> Result<(), shiftkey_sidecar::SidecarError> {
/// let path = std::path::Path::new("/run/user/1000/shiftkey/broker.sock");
/// let listener = shiftkey_sidecar::unix::bind_socket(path, "broker.socket").await?;
/// # let _ = listener; Ok(()) }
/// ```
pub async fn bind_socket(path: &Path, setting: &str) -> Result<UnixListener, SidecarError> {
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
    let dir = path.parent().ok_or_else(|| {
        SidecarError::Config(format!("`{setting}`: {} has no folder", path.display()))
    })?;
    ensure_private_dir(dir)?;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        let ours = meta.uid() == uid();
        if !meta.file_type().is_socket() || !ours {
            return Err(SidecarError::path(
                path,
                format!(
                    "exists and is not a socket of this user; it is left alone: remove it yourself \
                     if it is yours, or set a different `{setting}`"
                ),
            ));
        }
        if UnixStream::connect(path).await.is_ok() {
            return Err(SidecarError::path(
                path,
                format!(
                    "another process is already serving it (stop it, or set a different `{setting}`)"
                ),
            ));
        }
        std::fs::remove_file(path).map_err(|e| {
            SidecarError::io(
                format!("cannot remove the stale socket {}", path.display()),
                e,
            )
        })?;
    }
    let previous = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let bound = UnixListener::bind(path);
    rustix::process::umask(previous);
    bound.map_err(|e| SidecarError::io(format!("cannot listen on {}", path.display()), e))
}

/// Removes the socket file when dropped (when the server stops).
#[derive(Debug)]
pub struct SocketFile(pub PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use std::os::unix::fs::PermissionsExt as _;

    use super::{bind_socket, ensure_private_dir};

    fn scratch(name: &str) -> std::path::PathBuf {
        let d =
            std::env::temp_dir().join(format!("shiftkey-private-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn only_a_private_folder_of_ours_is_accepted() {
        let base = scratch("base");
        let made = base.join("a/b");
        ensure_private_dir(&made).unwrap();
        let mode = std::fs::metadata(&made).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);

        // Group-readable (not only writable) is refused, with the fix.
        std::fs::set_permissions(&made, std::fs::Permissions::from_mode(0o750)).unwrap();
        let err = ensure_private_dir(&made).unwrap_err().to_string();
        assert!(err.contains("chmod 700"), "{err}");
        std::fs::set_permissions(&made, std::fs::Permissions::from_mode(0o700)).unwrap();

        // A link to a private folder is refused, not followed.
        let link = base.join("link");
        std::os::unix::fs::symlink(&made, &link).unwrap();
        let err = ensure_private_dir(&link).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");

        // Another user's folder is refused (checkable where we may give one away: as root).
        if rustix::process::getuid().is_root() {
            let theirs = base.join("theirs");
            ensure_private_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65_534), Some(65_534)).unwrap();
            let err = ensure_private_dir(&theirs).unwrap_err().to_string();
            assert!(err.contains("belongs to uid 65534"), "{err}");
        }
        let _ = std::fs::remove_dir_all(&base);
    }

    #[tokio::test]
    async fn the_socket_path_is_taken_only_from_a_stale_socket_of_ours() {
        let base = scratch("sock");
        ensure_private_dir(&base).unwrap();
        let path = base.join("broker.sock");
        // Something else at the path: refused and left alone.
        std::fs::write(&path, "not a socket").unwrap();
        let err = bind_socket(&path, "broker.socket")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a socket of this user"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket");
        std::fs::remove_file(&path).unwrap();
        // A stale socket of ours (nobody listening): replaced, 0600.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let listener = bind_socket(&path, "broker.socket").await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A live one: refused.
        let err = bind_socket(&path, "broker.socket")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("already serving"), "{err}");
        drop(listener);
        let _ = std::fs::remove_dir_all(&base);
    }
}
