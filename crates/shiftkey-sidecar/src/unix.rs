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

/// The uid owning the client end of the loopback TCP connection `local` ← `peer`, as the
/// kernel lists it in `/proc/net/tcp` and `/proc/net/tcp6` (the client's socket is the row whose
/// local address is `peer` and whose remote address is `local`). `None` when no such row is
/// found (the client is gone, or the tables cannot be read).
#[cfg(target_os = "linux")]
pub(crate) fn tcp_peer_uid(local: std::net::SocketAddr, peer: std::net::SocketAddr) -> Option<u32> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .find_map(|table| {
            let text = std::fs::read_to_string(table).ok()?;
            socket_owner(&text, peer, local)
        })
}

/// In a `/proc/net/tcp{,6}` table, the uid of the socket `from` → `to`, skipping listening and
/// `TIME_WAIT` rows (the kernel lists those with uid 0).
#[cfg(any(target_os = "linux", test))]
fn socket_owner(table: &str, from: std::net::SocketAddr, to: std::net::SocketAddr) -> Option<u32> {
    let canonical = |a: std::net::SocketAddr| (a.ip().to_canonical(), a.port());
    let (from, to) = (canonical(from), canonical(to));
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (local, remote, state, uid) = (f.get(1)?, f.get(2)?, f.get(3)?, f.get(7)?);
        if *state == "0A" || *state == "06" {
            return None;
        }
        let matches = table_addr(local).map(canonical) == Some(from)
            && table_addr(remote).map(canonical) == Some(to);
        matches.then(|| uid.parse().ok()).flatten()
    })
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6): each 32-bit word as the kernel
/// holds it, printed in hex in this machine's byte order.
#[cfg(any(target_os = "linux", test))]
fn table_addr(field: &str) -> Option<std::net::SocketAddr> {
    let (ip, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for i in (0..ip.len()).step_by(8) {
        let word = u32::from_str_radix(ip.get(i..i + 8)?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => std::net::IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
        16 => std::net::IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?),
        _ => return None,
    };
    Some(std::net::SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use std::os::unix::fs::PermissionsExt as _;

    use super::{bind_socket, ensure_private_dir, socket_owner};

    #[test]
    fn the_socket_table_names_the_owner_of_the_client_end_only() {
        // Rows as the kernel prints them on a little-endian machine: 127.0.0.1:40000 →
        // 127.0.0.1:8181 owned by uid 1001, the server's end owned by 0, a listener and a
        // TIME_WAIT row of the same pair (uid 0), and the same in tcp6 for ::1.
        if cfg!(target_endian = "big") {
            return;
        }
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1FF5 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:9C40 0100007F:1FF5 06 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
   2: 0100007F:9C40 0100007F:1FF5 01 00000000:00000000 00:00000000 00000000  1001        0 3 1 0 100 0 0 10 0
   3: 0100007F:1FF5 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 4 1 0 100 0 0 10 0
";
        let client: std::net::SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let server: std::net::SocketAddr = "127.0.0.1:8181".parse().unwrap();
        assert_eq!(socket_owner(v4, client, server), Some(1001));
        assert_eq!(socket_owner(v4, server, client), Some(0));
        let elsewhere: std::net::SocketAddr = "127.0.0.1:40001".parse().unwrap();
        assert_eq!(socket_owner(v4, elsewhere, server), None);
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:9C40 00000000000000000000000001000000:1FF5 01 00000000:00000000 00:00000000 00000000  1002        0 5 1 0
   1: 0000000000000000FFFF00000100007F:9C41 0000000000000000FFFF00000100007F:1FF5 01 00000000:00000000 00:00000000 00000000  1003        0 6 1 0
";
        let client6: std::net::SocketAddr = "[::1]:40000".parse().unwrap();
        let server6: std::net::SocketAddr = "[::1]:8181".parse().unwrap();
        assert_eq!(socket_owner(v6, client6, server6), Some(1002));
        // An IPv4 client of a dual-stack listener is listed as ::ffff:127.0.0.1.
        let mapped: std::net::SocketAddr = "127.0.0.1:40001".parse().unwrap();
        assert_eq!(socket_owner(v6, mapped, server), Some(1003));
        assert_eq!(
            socket_owner("garbage\n1: zz:zz yy 01 a b c x", client, server),
            None
        );
    }

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
