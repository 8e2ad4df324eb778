//! [`FileStore`]: the token in one AES-256-GCM file, refreshed under an exclusive `flock` on a
//! sidecar lock file.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use shiftkey_auth::{StoreError, StoreErrorKind, StoreGuard, StoredToken, TokenStore};
use zeroize::Zeroizing;

use crate::format::{self, DecodeError};

/// What a store file's payload is bound to (format version 2 and later): the kind only.
pub(crate) const FILE_BINDING: format::Binding<'static> = format::Binding {
    kind: "file",
    name: "",
};
use crate::key::{KeySource, Keyring};

fn io(path: &Path, what: &str, e: std::io::Error) -> StoreError {
    StoreError::new(
        StoreErrorKind::Io,
        format!("{what} {}: {e}", path.display()),
    )
}

/// An encrypted token file (design §4.1, `docs/design.md`), the embedded default store.
///
/// - Format v1 (see `docs/store-format.md`): versioned header bound as AES-GCM associated data,
///   random nonce per write, key check to tell a wrong key from a damaged file.
/// - Writes go to a temporary file in the same folder (mode 0600), are fsynced, renamed over the
///   old file, and the folder is fsynced: a crash leaves the old or the new token, never a mix.
/// - A file that group or others can read is refused, as ssh does.
/// - A damaged file is moved aside as `<file>.corrupt-<unix time>` and reported as
///   [`StoreErrorKind::Corrupt`] (the manager re-authenticates); a wrong key, a foreign file or a
///   newer format are reported and left untouched.
/// - [`TokenStore::lock`] takes an exclusive `flock` on `<file>.lock`, waiting at most
///   `lock_timeout` (10 s): the lock protects the re-read → refresh → write sequence of every
///   process sharing the file.
///
/// # Example
/// ```
/// use std::sync::Arc;
/// use shiftkey_store::{FileStore, KeySource};
///
/// let dir = std::env::temp_dir().join(format!("shiftkey-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let key = KeySource::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", "example")?;
/// let store = Arc::new(FileStore::new(dir.join("plant-sync.token"), key));
/// // TokenManager::builder(strategy).store(store).build()? — every process using this file
/// // shares one token and refreshes it once per rotation.
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct FileStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    lock_path: PathBuf,
    keyring: Keyring,
    lock_timeout: Duration,
}

impl FileStore {
    /// A store at `path` opened with `key`. Nothing is read until first use.
    pub fn new(path: impl Into<PathBuf>, key: KeySource) -> Self {
        let path = path.into();
        let mut lock = path.clone().into_os_string();
        lock.push(".lock");
        Self {
            inner: Arc::new(Inner {
                path,
                lock_path: PathBuf::from(lock),
                keyring: Keyring::new(key),
                lock_timeout: Duration::from_secs(10),
            }),
        }
    }

    /// How long `lock` waits for another process (default 10 s).
    #[must_use]
    pub fn with_lock_timeout(self, timeout: Duration) -> Self {
        let inner = Arc::try_unwrap(self.inner).unwrap_or_else(|shared| Inner {
            path: shared.path.clone(),
            lock_path: shared.lock_path.clone(),
            keyring: Keyring::new(shared.keyring.source().clone()),
            lock_timeout: shared.lock_timeout,
        });
        Self {
            inner: Arc::new(Inner {
                lock_timeout: timeout,
                ..inner
            }),
        }
    }

    /// The token file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Reads and decrypts the file like [`TokenStore::load`] but never changes anything: a
    /// damaged file is reported and left where it is (for `shiftkey store check` and status
    /// pages).
    pub async fn verify(&self) -> Result<Option<StoredToken>, StoreError> {
        let inner = Arc::clone(&self.inner);
        blocking(move || inner.read_with(false)).await
    }

    /// Re-encrypts the stored token under `new_key` (under the lock); returns the store for the
    /// new key. The token is kept; a crash leaves the old or the new file, both complete.
    pub async fn rekey(&self, new_key: KeySource) -> Result<FileStore, StoreError> {
        let next = FileStore::new(self.inner.path.clone(), new_key);
        let mut guard = self.lock().await?;
        let token = guard.load().await?;
        if let Some(token) = token {
            let inner = Arc::clone(&next.inner);
            blocking(move || inner.write(&token)).await?;
        }
        guard.unlock().await?;
        Ok(next)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::new(StoreErrorKind::Io, format!("store task failed: {e}")))?
}

impl Inner {
    fn shown(&self) -> String {
        self.path.display().to_string()
    }

    fn read(&self) -> Result<Option<StoredToken>, StoreError> {
        self.read_with(true)
    }

    /// Reads; with `repair`, a damaged file is moved aside (see [`FileStore`]).
    fn read_with(&self, repair: bool) -> Result<Option<StoredToken>, StoreError> {
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&self.path, "cannot read", e)),
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(StoreError::new(
                StoreErrorKind::Permissions,
                format!(
                    "{} is readable by group or others (mode {mode:o}); refusing to use it. Fix with: chmod 600 {}",
                    self.shown(),
                    self.shown()
                ),
            ));
        }
        let bytes = Zeroizing::new(
            std::fs::read(&self.path).map_err(|e| io(&self.path, "cannot read", e))?,
        );
        let header = match format::parse_header(&bytes) {
            Ok(h) => h,
            Err(e) if !repair => return Err(e.into_store_error(&self.shown())),
            Err(e) => return self.undecodable(e),
        };
        let key = self
            .keyring
            .key_for(header.kdf, &header.salt)
            .map_err(|e| {
                if e.kind == StoreErrorKind::WrongKey {
                    StoreError::new(
                        StoreErrorKind::WrongKey,
                        format!(
                            "the configured key does not open {}: {}; left untouched",
                            self.shown(),
                            e.detail
                        ),
                    )
                } else {
                    e
                }
            })?;
        match format::decode(&bytes, &header, &key, FILE_BINDING) {
            Ok(token) => Ok(Some(token)),
            Err(e) if !repair => Err(e.into_store_error(&self.shown())),
            Err(e) => self.undecodable(e),
        }
    }

    /// A wrong key, a foreign file or a newer format is reported and left untouched; anything
    /// else is damage: the file is moved aside and the credential re-authenticates.
    fn undecodable(&self, e: DecodeError) -> Result<Option<StoredToken>, StoreError> {
        match e {
            // Nothing here proves damage: the file is left where it is.
            DecodeError::WrongKey
            | DecodeError::NotOurs
            | DecodeError::FutureVersion(_)
            | DecodeError::KdfOutOfBounds(_) => Err(e.into_store_error(&self.shown())),
            damage => {
                let mut err = damage.into_store_error(&self.shown());
                err.detail = match self.move_aside() {
                    Ok(p) => format!(
                        "{}; moved aside to {} — the credential will re-authenticate",
                        err.detail,
                        p.display()
                    ),
                    Err(m) => format!("{}; could not move it aside ({m})", err.detail),
                };
                Err(err)
            }
        }
    }

    fn move_aside(&self) -> Result<PathBuf, std::io::Error> {
        // Names the moved-aside file for the operator; no decision depends on it.
        #[allow(
            clippy::disallowed_methods,
            reason = "a file name stamp, not a schedule"
        )]
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut aside = self.path.clone().into_os_string();
        aside.push(format!(".corrupt-{secs}"));
        let aside = PathBuf::from(aside);
        std::fs::rename(&self.path, &aside)?;
        Ok(aside)
    }

    fn write(&self, token: &StoredToken) -> Result<(), StoreError> {
        let (kdf, salt, key) = self.keyring.write_key()?;
        let bytes = Zeroizing::new(format::encode(token, kdf, &salt, &key, FILE_BINDING)?);
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Writes happen under the lock, so any temporary file of ours already there was left by
        // a writer that died mid-save (kill -9, power loss): remove it.
        let prefix = format!(".{name}.tmp-");
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let tmp = dir.join(format!(
            ".{name}.tmp-{}-{:x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| io(&tmp, "cannot create", e))?;
            f.write_all(&bytes)
                .map_err(|e| io(&tmp, "cannot write", e))?;
            f.sync_all().map_err(|e| io(&tmp, "cannot fsync", e))?;
            std::fs::rename(&tmp, &self.path).map_err(|e| io(&self.path, "cannot replace", e))?;
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io(dir, "cannot fsync folder", e))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    fn take_lock(&self) -> Result<File, StoreError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&self.lock_path)
            .map_err(|e| io(&self.lock_path, "cannot open lock file", e))?;
        #[allow(
            clippy::disallowed_methods,
            reason = "bounds a blocking wait for another process; no schedule depends on it"
        )]
        let started = std::time::Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => {
                    let waited = started.elapsed();
                    if waited > Duration::from_secs(1) {
                        tracing::warn!(path = %self.lock_path.display(), waited_ms = waited.as_millis() as u64, "waited long for the token store lock");
                    }
                    return Ok(file);
                }
                Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < self.lock_timeout => {
                    #[allow(
                        clippy::disallowed_methods,
                        reason = "runs on a blocking thread, polling another process's lock"
                    )]
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(StoreError::new(
                        StoreErrorKind::LockTimeout,
                        format!(
                            "another process held {} for more than {:?}",
                            self.lock_path.display(),
                            self.lock_timeout
                        ),
                    ));
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(io(&self.lock_path, "cannot lock", e));
                }
            }
        }
    }
}

struct FileGuard {
    inner: Arc<Inner>,
    lock: Option<File>,
}

#[async_trait]
impl StoreGuard for FileGuard {
    async fn load(&mut self) -> Result<Option<StoredToken>, StoreError> {
        let inner = Arc::clone(&self.inner);
        blocking(move || inner.read()).await
    }

    async fn save(&mut self, token: &StoredToken) -> Result<(), StoreError> {
        let inner = Arc::clone(&self.inner);
        let token = token.clone();
        blocking(move || inner.write(&token)).await
    }

    async fn unlock(mut self: Box<Self>) -> Result<(), StoreError> {
        // Closing the file releases the flock.
        drop(self.lock.take());
        Ok(())
    }
}

#[async_trait]
impl TokenStore for FileStore {
    async fn load(&self) -> Result<Option<StoredToken>, StoreError> {
        let inner = Arc::clone(&self.inner);
        blocking(move || inner.read()).await
    }

    async fn lock(&self) -> Result<Box<dyn StoreGuard>, StoreError> {
        let inner = Arc::clone(&self.inner);
        let lock = blocking(move || inner.take_lock()).await?;
        Ok(Box::new(FileGuard {
            inner: Arc::clone(&self.inner),
            lock: Some(lock),
        }))
    }
}
