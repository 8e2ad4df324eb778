#![cfg_attr(docsrs, feature(doc_cfg))]
//! Durable token stores for shiftkey: tokens survive restarts, processes share one token, and a
//! rotated refresh token is never lost or used twice.
//!
//! # Overview
//! - [`FileStore`]: the embedded default, one AES-256-GCM file (format v3, v2 and v1 still read,
//!   `docs/store-format.md`) written atomically, refused when others can read it, with an
//!   exclusive `flock` on a sidecar lock file for the cross-process refresh protocol of design §4.3.
//! - `PgStore` (feature `postgres`): the same encrypted payload in a PostgreSQL row, refreshed
//!   under `SELECT … FOR UPDATE`, with `LISTEN/NOTIFY` for other hosts; and `LeaderLease`
//!   (`pg_try_advisory_lock` on a dedicated connection).
//! - [`KeySource`]: a raw 32-byte key (env var, key file, systemd credential) or a passphrase
//!   through Argon2id ([`KdfParams`], floor [`KDF_FLOOR`]).
//!
//! Stores implement [`shiftkey_auth::TokenStore`]; give one to
//! [`shiftkey_auth::TokenManagerBuilder::store`] and the manager does the rest: adopt a sibling's
//! fresh token, refresh under the lock from the newest refresh token, persist before handing out.
//!
//! # Cargo features
//! - `postgres`: `PgStore` and `LeaderLease` (sqlx, no TLS of its own).
//!
//! # Example
//! ```
//! use std::sync::Arc;
//! use shiftkey_auth::{StoredToken, TokenStore};
//! use shiftkey_store::{FileStore, KeySource};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = std::env::temp_dir().join(format!("shiftkey-lib-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let key = KeySource::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", "example")?;
//! let store = FileStore::new(dir.join("plant-sync.token"), key);
//! assert!(store.load().await?.is_none());
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod file;
mod format;
mod key;
#[cfg(feature = "postgres")]
mod postgres;

pub use file::FileStore;
pub use key::{KDF_CEILING, KDF_FLOOR, KdfParams, KeySource};
#[cfg(feature = "postgres")]
pub use postgres::{LEASE_DEADLINE, LeaderLease, PgStore, STORE_DEADLINE};

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// Decodes bytes as a store file with `key`, for fuzzing and `store check`: never panics.
#[doc(hidden)]
pub fn decode_for_fuzzing(bytes: &[u8], key: &[u8; 32]) -> bool {
    format::parse_header(bytes)
        .and_then(|h| format::decode(bytes, &h, key, file::FILE_BINDING))
        .is_ok()
}
