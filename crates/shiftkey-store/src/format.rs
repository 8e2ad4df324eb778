//! The store format, version 3 (documented in `docs/store-format.md`).
//!
//! ```text
//! offset size field
//!      0    4 magic "SKTS"
//!      4    1 version (3; 2 and 1 are still read from files)
//!      5    1 KDF id: 0 = raw key, 1 = Argon2id
//!      6    4 Argon2id m (KiB), u32 little-endian (0 for a raw key)
//!     10    4 Argon2id t
//!     14    4 Argon2id p
//!     18   16 salt (zero for a raw key)
//!     34   16 key check: AES-256-GCM tag of an empty message (nonce 0, AAD "shiftkey key check v1")
//!     50   12 nonce (random per write)
//!     62    8 generation, u64 little-endian (version 3; absent before)
//!     70    … AES-256-GCM ciphertext and 16-byte tag of the JSON token
//! ```
//! AAD: the whole header (so the generation is authenticated) then the [`Binding`] ("shiftkey
//! store v3", the store kind and the credential name, each NUL-terminated): a payload opens only
//! where it was written, so a database administrator cannot swap or replay rows between
//! credentials, and a row's generation can be checked against what was seen before. Version 2:
//! bytes 0..62 and the binding with "shiftkey store v2"; version 1: bytes 0..62 only (both read,
//! and rewritten as version 3 on the next save; a PostgreSQL row once written as version 3
//! refuses them).
//! The key check tells a wrong key (nothing touched) from a tampered file (moved aside).

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use rand::RngCore;
use shiftkey_auth::{StoreError, StoreErrorKind, StoredToken};
use zeroize::Zeroizing;

use crate::key::KdfParams;

pub(crate) const MAGIC: &[u8; 4] = b"SKTS";
pub(crate) const VERSION: u8 = 3;

/// Where a payload belongs: bound into the AEAD's associated data from format version 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Binding<'a> {
    /// `file` or `postgres`.
    pub(crate) kind: &'a str,
    /// The credential's name (a file is bound to its kind only: renaming it is an operator's
    /// right, and a swap of two files needs write access to the private folder anyway).
    pub(crate) name: &'a str,
}

impl Binding<'_> {
    /// The associated data of a version-2 or later payload whose header is `header`.
    fn aad(&self, version: u8, header: &[u8]) -> Vec<u8> {
        let mut aad = Vec::with_capacity(header.len() + 32 + self.name.len());
        aad.extend_from_slice(header);
        let label = if version >= 3 {
            "shiftkey store v3"
        } else {
            "shiftkey store v2"
        };
        for part in [label, self.kind, self.name] {
            aad.extend_from_slice(part.as_bytes());
            aad.push(0);
        }
        aad
    }
}
/// The header's length before version 3.
const HEADER_V2_LEN: usize = 62;
/// The header's length from version 3 (the generation follows the nonce).
pub(crate) const HEADER_LEN: usize = 70;

/// The header's length in `version`.
fn header_len(version: u8) -> usize {
    if version >= 3 {
        HEADER_LEN
    } else {
        HEADER_V2_LEN
    }
}
const TAG_LEN: usize = 16;
const KEY_CHECK_AAD: &[u8] = b"shiftkey key check v1";

/// How the key of a file was derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kdf {
    Raw,
    Argon2id(KdfParams),
}

/// A parsed header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) version: u8,
    pub(crate) kdf: Kdf,
    pub(crate) salt: [u8; 16],
    key_check: [u8; 16],
    nonce: [u8; 12],
    /// The token's generation, authenticated (version 3; `None` before).
    pub(crate) generation: Option<u64>,
}

/// Why bytes do not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DecodeError {
    NotOurs,
    FutureVersion(u8),
    Truncated(usize),
    BadHeader(&'static str),
    KdfOutOfBounds(KdfParams),
    WrongKey,
    Tampered,
    BadPayload(String),
    /// An older payload than the place it was found in has held: a restored or replayed row.
    #[cfg_attr(
        not(feature = "postgres"),
        allow(dead_code, reason = "only a PostgreSQL row knows what it held before")
    )]
    RolledBack(String),
}

impl DecodeError {
    pub(crate) fn into_store_error(self, path: &str) -> StoreError {
        use StoreErrorKind::*;
        let (kind, detail) = match self {
            Self::NotOurs => (
                Unsupported,
                format!("{path} is not a shiftkey token store (wrong magic bytes); left untouched"),
            ),
            Self::FutureVersion(v) => (
                Unsupported,
                format!(
                    "{path} has format version {v}, newer than this shiftkey understands (3); left untouched — upgrade shiftkey"
                ),
            ),
            Self::Truncated(n) => (Corrupt, format!("{path} is truncated ({n} bytes)")),
            Self::BadHeader(what) => (Corrupt, format!("{path} has a corrupt header ({what})")),
            Self::KdfOutOfBounds(p) => (
                Unsupported,
                format!(
                    "{path} asks for Argon2id m={} KiB, t={}, p={}, outside the accepted bounds (t ≤ {}, m ≤ 1 GiB, p ≤ {}): its header is damaged or forged, or it was written with costlier parameters than this version accepts; nothing was derived and the file is left untouched",
                    p.m_kib,
                    p.t,
                    p.p,
                    crate::KDF_CEILING.t,
                    crate::KDF_CEILING.p
                ),
            ),
            Self::WrongKey => (
                WrongKey,
                format!(
                    "the configured key does not open {path}; left untouched — check the key or passphrase"
                ),
            ),
            Self::Tampered => (
                Corrupt,
                format!(
                    "{path} failed authentication: a byte was changed, the file is damaged, or the payload was copied from another credential"
                ),
            ),
            Self::BadPayload(e) => (
                Corrupt,
                format!("{path} decrypted but its content is not a token ({e})"),
            ),
            Self::RolledBack(why) => (
                Corrupt,
                format!(
                    "{path} was rolled back or replayed ({why}); its refresh token may be spent, so it is not used"
                ),
            ),
        };
        StoreError::new(kind, detail)
    }
}

/// The cipher for `key`, read in place: no copy of the key is left on the stack (the cipher's
/// own key schedule is zeroized on drop, aes-gcm's `zeroize` feature).
fn cipher(key: &[u8; 32]) -> Aes256Gcm {
    let key: &Key<Aes256Gcm> = key.into();
    Aes256Gcm::new(key)
}

fn key_check(key: &[u8; 32]) -> Result<[u8; 16], StoreError> {
    let tag = cipher(key)
        .encrypt(
            &Nonce::from([0u8; 12]),
            Payload {
                msg: &[],
                aad: KEY_CHECK_AAD,
            },
        )
        .map_err(|_| StoreError::new(StoreErrorKind::Configuration, "AES-GCM key check failed"))?;
    tag.as_slice().try_into().map_err(|_| {
        StoreError::new(
            StoreErrorKind::Configuration,
            "AES-GCM tag has an unexpected length",
        )
    })
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

/// Parses the header (no key needed): magic, version, KDF, salt.
pub(crate) fn parse_header(bytes: &[u8]) -> Result<Header, DecodeError> {
    if bytes.len() < 5 {
        return Err(if bytes.len() >= 4 && &bytes[..4] != MAGIC {
            DecodeError::NotOurs
        } else {
            DecodeError::Truncated(bytes.len())
        });
    }
    if &bytes[..4] != MAGIC {
        return Err(DecodeError::NotOurs);
    }
    let version = bytes[4];
    if !(1..=VERSION).contains(&version) {
        return Err(if version > VERSION {
            DecodeError::FutureVersion(version)
        } else {
            DecodeError::BadHeader("version 0")
        });
    }
    if bytes.len() < header_len(version) + TAG_LEN {
        return Err(DecodeError::Truncated(bytes.len()));
    }
    let kdf = match bytes[5] {
        0 => Kdf::Raw,
        1 => {
            let params = KdfParams {
                m_kib: u32_at(bytes, 6),
                t: u32_at(bytes, 10),
                p: u32_at(bytes, 14),
            };
            // Checked before anything is derived: the header is authenticated only by the key.
            if !params.within_bounds() {
                return Err(DecodeError::KdfOutOfBounds(params));
            }
            Kdf::Argon2id(params)
        }
        _ => return Err(DecodeError::BadHeader("unknown KDF id")),
    };
    let mut salt = [0u8; 16];
    salt.copy_from_slice(&bytes[18..34]);
    let mut key_check = [0u8; 16];
    key_check.copy_from_slice(&bytes[34..50]);
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&bytes[50..62]);
    let generation = (version >= 3).then(|| {
        let mut g = [0u8; 8];
        g.copy_from_slice(&bytes[62..70]);
        u64::from_le_bytes(g)
    });
    Ok(Header {
        version,
        kdf,
        salt,
        key_check,
        nonce,
        generation,
    })
}

/// Decrypts a whole file with `key` (already derived for this header's KDF and salt).
pub(crate) fn decode(
    bytes: &[u8],
    header: &Header,
    key: &[u8; 32],
    binding: Binding<'_>,
) -> Result<StoredToken, DecodeError> {
    if key_check(key).map_err(|_| DecodeError::WrongKey)? != header.key_check {
        return Err(DecodeError::WrongKey);
    }
    let len = header_len(header.version);
    let aad = if header.version >= 2 {
        binding.aad(header.version, &bytes[..len])
    } else {
        bytes[..len].to_vec()
    };
    let plain = Zeroizing::new(
        cipher(key)
            .decrypt(
                &Nonce::from(header.nonce),
                Payload {
                    msg: &bytes[len..],
                    aad: &aad,
                },
            )
            .map_err(|_| DecodeError::Tampered)?,
    );
    let token: StoredToken =
        serde_json::from_slice(&plain).map_err(|e| DecodeError::BadPayload(e.to_string()))?;
    match header.generation {
        Some(g) if g != token.generation => Err(DecodeError::BadPayload(format!(
            "the header says generation {g}, the token {}",
            token.generation
        ))),
        _ => Ok(token),
    }
}

/// Encrypts `token` into a complete payload of the current version, bound to `binding`.
pub(crate) fn encode(
    token: &StoredToken,
    kdf: Kdf,
    salt: &[u8; 16],
    key: &[u8; 32],
    binding: Binding<'_>,
) -> Result<Vec<u8>, StoreError> {
    encode_version(token, kdf, salt, key, binding, VERSION)
}

pub(crate) fn encode_version(
    token: &StoredToken,
    kdf: Kdf,
    salt: &[u8; 16],
    key: &[u8; 32],
    binding: Binding<'_>,
    version: u8,
) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::with_capacity(HEADER_LEN + 512);
    out.extend_from_slice(MAGIC);
    out.push(version);
    let (id, p) = match kdf {
        Kdf::Raw => (
            0u8,
            KdfParams {
                m_kib: 0,
                t: 0,
                p: 0,
            },
        ),
        Kdf::Argon2id(p) => (1u8, p),
    };
    out.push(id);
    out.extend_from_slice(&p.m_kib.to_le_bytes());
    out.extend_from_slice(&p.t.to_le_bytes());
    out.extend_from_slice(&p.p.to_le_bytes());
    out.extend_from_slice(salt);
    out.extend_from_slice(&key_check(key)?);
    let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    out.extend_from_slice(&nonce);
    if version >= 3 {
        out.extend_from_slice(&token.generation.to_le_bytes());
    }
    let len = header_len(version);
    let plain =
        Zeroizing::new(serde_json::to_vec(token).map_err(|e| {
            StoreError::new(StoreErrorKind::Io, format!("serialising the token: {e}"))
        })?);
    let aad = if version >= 2 {
        binding.aad(version, &out[..len])
    } else {
        out[..len].to_vec()
    };
    let sealed = cipher(key)
        .encrypt(
            &nonce,
            Payload {
                msg: &plain,
                aad: &aad,
            },
        )
        .map_err(|_| StoreError::new(StoreErrorKind::Io, "AES-GCM encryption failed"))?;
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// A new random salt.
pub(crate) fn new_salt() -> [u8; 16] {
    let mut s = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut s);
    s
}

/// A token of `generation` for the store's unit tests.
#[cfg(test)]
pub(crate) fn test_token(generation: u64) -> StoredToken {
    use std::time::{Duration, SystemTime};
    StoredToken {
        access_token: "at".into(),
        refresh_token: Some("rt".into()),
        token_type: "Bearer".into(),
        issued_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        lifetime: Duration::from_secs(3600),
        lifetime_source: shiftkey_auth::StoredLifetimeSource::ExpiresIn,
        scope: None,
        generation,
        limits: shiftkey_auth::ServerLimits::default(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;

    const KEY: [u8; 32] = [7; 32];
    const MES: Binding<'static> = Binding {
        kind: "postgres",
        name: "mes",
    };

    fn token() -> StoredToken {
        test_token(4)
    }

    fn open(bytes: &[u8], binding: Binding<'_>) -> Result<StoredToken, DecodeError> {
        let header = parse_header(bytes)?;
        decode(bytes, &header, &KEY, binding)
    }

    #[test]
    fn a_payload_opens_only_under_its_own_name_and_kind() {
        let v2 = encode_version(&token(), Kdf::Raw, &[0; 16], &KEY, MES, 2).unwrap();
        let v3 = encode(&token(), Kdf::Raw, &[0; 16], &KEY, MES).unwrap();
        assert_eq!((v2[4], v3[4]), (2, 3));
        for bytes in [v2, v3] {
            assert_eq!(open(&bytes, MES).unwrap(), token());
            for other in [
                Binding {
                    kind: "postgres",
                    name: "erp",
                },
                Binding {
                    kind: "file",
                    name: "mes",
                },
            ] {
                assert!(
                    matches!(open(&bytes, other), Err(DecodeError::Tampered)),
                    "{other:?}"
                );
            }
        }
    }

    /// Version 3 carries the generation in the authenticated header: it is read without the
    /// key, and changing it fails authentication.
    #[test]
    fn the_generation_is_in_the_authenticated_header() {
        let bytes = encode(&token(), Kdf::Raw, &[0; 16], &KEY, MES).unwrap();
        assert_eq!(parse_header(&bytes).unwrap().generation, Some(4));
        assert_eq!(&bytes[62..70], &4u64.to_le_bytes());
        let mut newer = bytes.clone();
        newer[62] = 9;
        assert_eq!(parse_header(&newer).unwrap().generation, Some(9));
        assert!(matches!(open(&newer, MES), Err(DecodeError::Tampered)));
        let v2 = encode_version(&token(), Kdf::Raw, &[0; 16], &KEY, MES, 2).unwrap();
        assert_eq!(parse_header(&v2).unwrap().generation, None);
        assert_eq!(v2.len() + 8, bytes.len());
    }

    #[test]
    fn a_version_1_payload_is_still_read() {
        let v1 = encode_version(&token(), Kdf::Raw, &[0; 16], &KEY, MES, 1).unwrap();
        assert_eq!(v1[4], 1);
        // Version 1 bound nothing: it opens under any name (and is rewritten as 2 on save).
        assert_eq!(open(&v1, MES).unwrap(), token());
        assert_eq!(
            open(
                &v1,
                Binding {
                    kind: "postgres",
                    name: "erp"
                }
            )
            .unwrap(),
            token()
        );
    }
}
