//! Where the store's 256-bit key comes from: a raw key (env var, key file, systemd credential) or
//! a passphrase through Argon2id.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use shiftkey_auth::{Secret, StoreError, StoreErrorKind};
use zeroize::Zeroizing;

/// Argon2id parameters (design §4.1 in `docs/design.md`: m = 64 MiB, t = 3, p = 1; below
/// m = 19 MiB or t = 2 refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl Default for KdfParams {
    fn default() -> Self {
        Self {
            m_kib: 64 * 1024,
            t: 3,
            p: 1,
        }
    }
}

/// The weakest parameters accepted (OWASP's Argon2id minimum).
pub const KDF_FLOOR: KdfParams = KdfParams {
    m_kib: 19 * 1024,
    t: 2,
    p: 1,
};

/// The costliest Argon2id parameters accepted, configured or read from a file: 1 GiB of memory,
/// 10 passes, 8 lanes.
pub const KDF_CEILING: KdfParams = KdfParams {
    m_kib: 1024 * 1024,
    t: 10,
    p: 8,
};

fn config(detail: impl Into<String>) -> StoreError {
    StoreError::new(StoreErrorKind::Configuration, detail)
}

impl KdfParams {
    /// Refuses parameters below [`KDF_FLOOR`] (a file claiming them is refused too).
    pub fn validate(&self) -> Result<(), StoreError> {
        if !self.within_bounds() {
            return Err(config(format!(
                "Argon2id parameters m={} KiB, t={}, p={} are outside the accepted range (at least m={} KiB, t={}, p=1; at most m={} KiB (1 GiB), t={}, p={})",
                self.m_kib,
                self.t,
                self.p,
                KDF_FLOOR.m_kib,
                KDF_FLOOR.t,
                KDF_CEILING.m_kib,
                KDF_CEILING.t,
                KDF_CEILING.p
            )));
        }
        Ok(())
    }

    /// Whether the parameters lie between [`KDF_FLOOR`] and [`KDF_CEILING`]. A file's header is
    /// checked against this before anything is derived: the header is not authenticated until
    /// the key exists, and a flipped bit must not ask for hours of Argon2.
    #[must_use]
    pub fn within_bounds(&self) -> bool {
        (KDF_FLOOR.m_kib..=KDF_CEILING.m_kib).contains(&self.m_kib)
            && (KDF_FLOOR.t..=KDF_CEILING.t).contains(&self.t)
            && (KDF_FLOOR.p..=KDF_CEILING.p).contains(&self.p)
    }

    pub(crate) fn derive(
        &self,
        passphrase: &Secret,
        salt: &[u8],
    ) -> Result<Zeroizing<[u8; 32]>, StoreError> {
        self.validate()?;
        let params = argon2::Params::new(self.m_kib, self.t, self.p, Some(32))
            .map_err(|e| config(format!("Argon2id parameters: {e}")))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut key = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(passphrase.expose().as_bytes(), salt, key.as_mut())
            .map_err(|e| config(format!("Argon2id failed: {e}")))?;
        Ok(key)
    }
}

/// The store's key.
#[derive(Clone)]
pub enum KeySource {
    /// A raw 32-byte key.
    Raw(Zeroizing<[u8; 32]>),
    /// A passphrase stretched by Argon2id with a per-file random salt.
    Passphrase {
        /// The passphrase.
        passphrase: Secret,
        /// Argon2id parameters for new files (a file's own parameters are used to open it).
        params: KdfParams,
    },
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Raw(_) => f.write_str("KeySource::Raw([REDACTED])"),
            Self::Passphrase { params, .. } => f
                .debug_struct("KeySource::Passphrase")
                .field("params", params)
                .finish_non_exhaustive(),
        }
    }
}

impl KeySource {
    /// A raw key from base64 text (standard alphabet; surrounding whitespace ignored).
    /// `origin` names where it came from in errors (`SHIFTKEY_STORE_KEY`, a path).
    pub fn from_base64(text: &str, origin: &str) -> Result<Self, StoreError> {
        let bytes = Zeroizing::new(
            STANDARD
                .decode(text.trim())
                // Never the decoder's words: they quote a character of the key and its place.
                .map_err(|_| {
                    config(format!(
                        "the key in {origin} is not standard base64 (32 bytes written as 44 \
                         characters of A-Z, a-z, 0-9, `+`, `/` and `=`; generate one with \
                         `head -c 32 /dev/urandom | base64`)"
                    ))
                })?,
        );
        let key: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| config(format!("the key in {origin} is {} bytes; it must be 32 (generate one with `head -c 32 /dev/urandom | base64`)", bytes.len())))?;
        Ok(Self::Raw(Zeroizing::new(key)))
    }

    /// A raw key from an environment variable holding base64.
    pub fn from_env(var: &str) -> Result<Self, StoreError> {
        let value = Zeroizing::new(
            std::env::var(var)
                .map_err(|_| config(format!("environment variable {var} is not set")))?,
        );
        Self::from_base64(&value, &format!("environment variable {var}"))
    }

    /// A raw key from a file holding base64.
    pub fn from_key_file(path: &Path) -> Result<Self, StoreError> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| config(format!("cannot read key file {}: {e}", path.display())))?,
        );
        Self::from_base64(&text, &path.display().to_string())
    }

    /// A raw key from a systemd credential (`LoadCredential=NAME:...`): the file `NAME` in
    /// `$CREDENTIALS_DIRECTORY`, holding base64.
    pub fn from_systemd_credential(name: &str) -> Result<Self, StoreError> {
        let dir = std::env::var_os("CREDENTIALS_DIRECTORY")
            .ok_or_else(|| config(format!("systemd credential {name}: CREDENTIALS_DIRECTORY is not set (is this running under systemd with LoadCredential=?)")))?;
        Self::from_key_file(&Path::new(&dir).join(name))
    }

    /// A fresh random 32-byte key from the operating system, as base64 text (what
    /// [`KeySource::from_base64`] reads; `shiftkey store init` writes it to a 0600 file).
    ///
    /// ```
    /// use shiftkey_store::KeySource;
    ///
    /// let text = KeySource::generate_base64();
    /// assert!(KeySource::from_base64(text.expose(), "new key").is_ok());
    /// ```
    #[must_use]
    pub fn generate_base64() -> Secret {
        use rand::RngCore as _;
        let mut key = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(key.as_mut());
        Secret::new(STANDARD.encode(&key[..]))
    }

    /// A passphrase with the default Argon2id parameters.
    pub fn passphrase(passphrase: Secret) -> Self {
        Self::Passphrase {
            passphrase,
            params: KdfParams::default(),
        }
    }
}

/// What a write needs: the KDF to record, its salt, and the key.
pub(crate) type WriteKey = (crate::format::Kdf, [u8; 16], Zeroizing<[u8; 32]>);

/// The derived key and the salt it belongs to.
/// The last derived key, with the salt and the parameters it was derived under: a key is reused
/// only for the same salt *and* the same parameters.
type Derived = Option<([u8; 16], KdfParams, Zeroizing<[u8; 32]>)>;

/// A key source plus the key derived from it, at most once per salt per process. Shared by the
/// file and PostgreSQL stores.
#[derive(Debug)]
pub(crate) struct Keyring {
    source: KeySource,
    derived: std::sync::Mutex<Derived>,
}

impl Keyring {
    pub(crate) fn new(source: KeySource) -> Self {
        Self {
            source,
            derived: std::sync::Mutex::new(None),
        }
    }

    pub(crate) fn source(&self) -> &KeySource {
        &self.source
    }

    fn cached(&self) -> std::sync::MutexGuard<'_, Derived> {
        self.derived
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The key that opens a payload written with `kdf` and `salt`. A payload written with the
    /// other kind of key is [`StoreErrorKind::WrongKey`]; weak KDF parameters are refused.
    pub(crate) fn key_for(
        &self,
        kdf: crate::format::Kdf,
        salt: &[u8; 16],
    ) -> Result<Zeroizing<[u8; 32]>, StoreError> {
        use crate::format::Kdf;
        match (&self.source, kdf) {
            (KeySource::Raw(k), Kdf::Raw) => Ok(k.clone()),
            (KeySource::Passphrase { passphrase, .. }, Kdf::Argon2id(params)) => {
                let mut cached = self.cached();
                if let Some((s, p, k)) = cached.as_ref()
                    && s == salt
                    && *p == params
                {
                    return Ok(k.clone());
                }
                let k = params.derive(passphrase, salt)?;
                *cached = Some((*salt, params, k.clone()));
                Ok(k)
            }
            (KeySource::Raw(_), Kdf::Argon2id(_)) => Err(StoreError::new(
                StoreErrorKind::WrongKey,
                "it was written with a passphrase, but a raw key is configured",
            )),
            (KeySource::Passphrase { .. }, Kdf::Raw) => Err(StoreError::new(
                StoreErrorKind::WrongKey,
                "it was written with a raw key, but a passphrase is configured",
            )),
        }
    }

    /// The KDF, salt and key to write with: the cached derivation when there is one, else a new salt.
    pub(crate) fn write_key(&self) -> Result<WriteKey, StoreError> {
        use crate::format::{self, Kdf};
        match &self.source {
            KeySource::Raw(k) => Ok((Kdf::Raw, [0u8; 16], k.clone())),
            KeySource::Passphrase { passphrase, params } => {
                let mut cached = self.cached();
                // The key read last is reused only if it was derived under the configured
                // parameters: a file read under others is rewritten under a fresh salt, so the
                // parameters in its header are the ones its key came from.
                if let Some((salt, p, k)) = cached.as_ref()
                    && p == params
                {
                    return Ok((Kdf::Argon2id(*params), *salt, k.clone()));
                }
                let salt = format::new_salt();
                let k = params.derive(passphrase, &salt)?;
                *cached = Some((salt, *params, k.clone()));
                Ok((Kdf::Argon2id(*params), salt, k))
            }
        }
    }
}
