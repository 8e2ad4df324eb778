//! FileStore behaviour.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use shiftkey_auth::{
    Secret, ServerLimits, StoreErrorKind, StoredLifetimeSource, StoredToken, TokenStore,
};
use shiftkey_store::{FileStore, KDF_FLOOR, KdfParams, KeySource};

const KEY_A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const KEY_B: &str = "HxwdHhsaGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA=";

pub(crate) struct Dir(pub(crate) PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn dir(name: &str) -> Dir {
    let d = std::env::temp_dir().join(format!(
        "shiftkey-store-{name}-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&d).unwrap();
    Dir(d)
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn key(b64: &str) -> KeySource {
    KeySource::from_base64(b64, "test").unwrap()
}

pub(crate) fn token(generation: u64) -> StoredToken {
    StoredToken {
        access_token: format!("at-{generation}").into(),
        refresh_token: Some(format!("rt-{generation}").into()),
        token_type: "Bearer".into(),
        issued_at: SystemTime::now(),
        lifetime: Duration::from_secs(3600),
        lifetime_source: StoredLifetimeSource::ExpiresIn,
        scope: Some("api".into()),
        generation,
        limits: ServerLimits {
            lifetime_cap: Some(Duration::from_secs(14_400)),
            idle_limit: None,
        },
    }
}

async fn save(store: &FileStore, t: &StoredToken) {
    let mut g = store.lock().await.unwrap();
    g.save(t).await.unwrap();
    g.unlock().await.unwrap();
}

fn corrupt_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".corrupt-")
        })
        .count()
}

#[tokio::test]
async fn round_trip_with_mode_0600_and_no_plaintext_on_disk() {
    let d = dir("rt");
    let store = FileStore::new(d.0.join("t"), key(KEY_A));
    assert_eq!(store.load().await.unwrap(), None);
    let t = token(7);
    save(&store, &t).await;
    assert_eq!(store.load().await.unwrap(), Some(t.clone()));
    let mode = std::fs::metadata(store.path())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let raw = std::fs::read(store.path()).unwrap();
    assert!(
        !String::from_utf8_lossy(&raw).contains("at-7")
            && !String::from_utf8_lossy(&raw).contains("rt-7")
    );
    // A second write uses a fresh nonce: same token, different bytes.
    save(&store, &t).await;
    assert_ne!(std::fs::read(store.path()).unwrap(), raw);
}

#[tokio::test]
async fn every_kind_of_damage_gets_its_own_clear_error() {
    struct Case {
        name: &'static str,
        damage: fn(&mut Vec<u8>),
        kind: StoreErrorKind,
        moved_aside: bool,
        says: &'static str,
    }
    let cases = [
        Case {
            name: "tampered ciphertext",
            damage: |b| {
                let n = b.len() - 20;
                b[n] ^= 1
            },
            kind: StoreErrorKind::Corrupt,
            moved_aside: true,
            says: "failed authentication",
        },
        Case {
            name: "tampered header (bound as AAD)",
            damage: |b| b[55] ^= 0x80,
            kind: StoreErrorKind::Corrupt,
            moved_aside: true,
            says: "failed authentication",
        },
        Case {
            name: "truncated",
            damage: |b| b.truncate(70),
            kind: StoreErrorKind::Corrupt,
            moved_aside: true,
            says: "truncated",
        },
        Case {
            name: "truncated to nothing",
            damage: |b| b.truncate(3),
            kind: StoreErrorKind::Corrupt,
            moved_aside: true,
            says: "truncated",
        },
        Case {
            name: "wrong magic",
            damage: |b| b[0] = b'X',
            kind: StoreErrorKind::Unsupported,
            moved_aside: false,
            says: "not a shiftkey token store",
        },
        Case {
            name: "future version",
            damage: |b| b[4] = 9,
            kind: StoreErrorKind::Unsupported,
            moved_aside: false,
            says: "version 9",
        },
        Case {
            name: "unknown KDF",
            damage: |b| b[5] = 7,
            kind: StoreErrorKind::Corrupt,
            moved_aside: true,
            says: "unknown KDF",
        },
    ];
    for case in cases {
        let d = dir("damage");
        let store = FileStore::new(d.0.join("t"), key(KEY_A));
        save(&store, &token(1)).await;
        let mut bytes = std::fs::read(store.path()).unwrap();
        (case.damage)(&mut bytes);
        std::fs::write(store.path(), &bytes).unwrap();
        let err = store.load().await.unwrap_err();
        assert_eq!(err.kind, case.kind, "{}: {err}", case.name);
        assert!(err.detail.contains(case.says), "{}: {err}", case.name);
        assert!(
            err.detail.contains(&store.path().display().to_string()),
            "{}: names the file: {err}",
            case.name
        );
        assert_eq!(
            corrupt_files(&d.0),
            usize::from(case.moved_aside),
            "{}",
            case.name
        );
        assert_eq!(
            store.path().exists(),
            !case.moved_aside,
            "{}: untouched unless moved aside",
            case.name
        );
    }
}

#[tokio::test]
async fn a_save_clears_temporary_files_left_by_a_writer_that_died() {
    let d = dir("stale");
    let store = FileStore::new(d.0.join("t"), key(KEY_A));
    let stale = d.0.join(".t.tmp-4242-deadbeef");
    std::fs::write(&stale, b"half a token").unwrap();
    let other = d.0.join(".u.tmp-4242-deadbeef");
    std::fs::write(&other, b"another file's").unwrap();
    save(&store, &token(1)).await;
    assert!(!stale.exists(), "the dead writer's temporary file is gone");
    assert!(other.exists(), "other tokens' files are not touched");
}

#[tokio::test]
async fn verify_reports_damage_and_moves_nothing() {
    let d = dir("verify");
    let store = FileStore::new(d.0.join("t"), key(KEY_A));
    save(&store, &token(4)).await;
    assert_eq!(
        store.verify().await.unwrap(),
        Some(token_like(&store).await)
    );
    let mut bytes = std::fs::read(store.path()).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(store.path(), &bytes).unwrap();
    let err = store.verify().await.unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Corrupt, "{err}");
    assert_eq!(std::fs::read(store.path()).unwrap(), bytes, "left in place");
    assert_eq!(corrupt_files(&d.0), 0);
    // `load` (what the manager uses) moves it aside and re-authenticates.
    assert_eq!(
        store.load().await.unwrap_err().kind,
        StoreErrorKind::Corrupt
    );
    assert_eq!(corrupt_files(&d.0), 1);
}

async fn token_like(store: &FileStore) -> StoredToken {
    store.load().await.unwrap().unwrap()
}

#[tokio::test]
async fn a_wrong_key_is_reported_and_touches_nothing() {
    let d = dir("wrongkey");
    let store = FileStore::new(d.0.join("t"), key(KEY_A));
    save(&store, &token(3)).await;
    let before = std::fs::read(store.path()).unwrap();
    let wrong = FileStore::new(d.0.join("t"), key(KEY_B));
    let err = wrong.load().await.unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::WrongKey, "{err}");
    assert_eq!(std::fs::read(store.path()).unwrap(), before);
    assert_eq!(corrupt_files(&d.0), 0);
    let pass = FileStore::new(
        d.0.join("t"),
        KeySource::Passphrase {
            passphrase: Secret::new("x"),
            params: KDF_FLOOR,
        },
    );
    assert_eq!(
        pass.load().await.unwrap_err().kind,
        StoreErrorKind::WrongKey
    );
}

#[tokio::test]
async fn a_file_others_can_read_is_refused_with_the_fix() {
    let d = dir("perm");
    let store = FileStore::new(d.0.join("t"), key(KEY_A));
    save(&store, &token(1)).await;
    std::fs::set_permissions(store.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = store.load().await.unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Permissions);
    assert!(err.detail.contains("chmod 600"), "{err}");
}

#[tokio::test]
async fn passphrases_derive_once_and_rekey_keeps_the_token() {
    let d = dir("rekey");
    let pass = KeySource::Passphrase {
        passphrase: Secret::new("correct horse"),
        params: KDF_FLOOR,
    };
    let store = FileStore::new(d.0.join("t"), pass);
    save(&store, &token(5)).await;
    assert_eq!(store.load().await.unwrap().unwrap().generation, 5);
    let raw = store.rekey(key(KEY_B)).await.unwrap();
    assert_eq!(
        raw.load().await.unwrap().unwrap(),
        store_token_5_without_time(&raw).await
    );
    assert_eq!(
        store.load().await.unwrap_err().kind,
        StoreErrorKind::WrongKey,
        "the old passphrase no longer opens it"
    );
    let back = raw
        .rekey(KeySource::Passphrase {
            passphrase: Secret::new("battery staple"),
            params: KDF_FLOOR,
        })
        .await
        .unwrap();
    assert_eq!(
        back.load()
            .await
            .unwrap()
            .unwrap()
            .refresh_token
            .as_ref()
            .map(shiftkey_auth::Secret::expose),
        Some("rt-5")
    );
}

async fn store_token_5_without_time(store: &FileStore) -> StoredToken {
    let t = store.load().await.unwrap().unwrap();
    assert_eq!(
        (
            t.generation,
            t.refresh_token.as_ref().map(shiftkey_auth::Secret::expose)
        ),
        (5, Some("rt-5"))
    );
    t
}

#[test]
fn kdf_parameters_below_the_floor_are_refused() {
    assert!(KdfParams::default().validate().is_ok());
    assert!(KDF_FLOOR.validate().is_ok());
    for weak in [
        KdfParams {
            m_kib: 8 * 1024,
            t: 3,
            p: 1,
        },
        KdfParams {
            m_kib: 64 * 1024,
            t: 1,
            p: 1,
        },
        KdfParams {
            m_kib: 64 * 1024,
            t: 3,
            p: 0,
        },
    ] {
        let err = weak.validate().unwrap_err();
        assert_eq!(err.kind, StoreErrorKind::Configuration, "{weak:?}");
        assert!(
            err.detail.contains("m=") && err.detail.contains("t="),
            "{err}"
        );
    }
}

#[test]
fn bad_keys_are_clear_errors() {
    let err = KeySource::from_base64("not base64!", "SHIFTKEY_STORE_KEY").unwrap_err();
    assert!(
        err.detail.contains("SHIFTKEY_STORE_KEY") && err.detail.contains("base64"),
        "{err}"
    );
    let err = KeySource::from_base64("AAEC", "key.b64").unwrap_err();
    assert!(
        err.detail.contains("3 bytes") && err.detail.contains("32"),
        "{err}"
    );
    let err = KeySource::from_env("SHIFTKEY_TEST_SURELY_UNSET").unwrap_err();
    assert!(err.detail.contains("SHIFTKEY_TEST_SURELY_UNSET"));
    assert!(!format!("{:?}", KeySource::from_base64(KEY_A, "x").unwrap()).contains(KEY_A));
}

// Real time: the file lock is polled on a blocking thread against the real clock, which paused
// time does not reach. The 200 ms is how long `b` waits for a lock `a` is known to hold: the
// timeout is the expected outcome, so no machine is too slow for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_excludes_other_handles_and_times_out_clearly() {
    let d = dir("lock");
    let a = FileStore::new(d.0.join("t"), key(KEY_A));
    let b = FileStore::new(d.0.join("t"), key(KEY_A)).with_lock_timeout(Duration::from_millis(200));
    let held = a.lock().await.unwrap();
    let err = b.lock().await.err().unwrap();
    assert_eq!(err.kind, StoreErrorKind::LockTimeout);
    assert!(err.detail.contains(".lock"), "{err}");
    held.unlock().await.unwrap();
    b.lock().await.unwrap().unlock().await.unwrap();
}

mod with_manager {
    use std::sync::Arc;

    use shiftkey_auth::testing::ScriptedStrategy;
    use shiftkey_auth::{AuthError, PermanentKind, TokenManager};

    use super::*;

    #[tokio::test]
    async fn a_corrupt_file_is_moved_aside_and_the_manager_reauthenticates() {
        let d = dir("mgr-corrupt");
        let store = FileStore::new(d.0.join("t"), key(KEY_A));
        save(&store, &token(9)).await;
        let mut bytes = std::fs::read(store.path()).unwrap();
        let n = bytes.len() - 3;
        bytes[n] ^= 0xff;
        std::fs::write(store.path(), &bytes).unwrap();
        let strategy = ScriptedStrategy::new(Duration::from_secs(3600), Duration::ZERO);
        let m = TokenManager::builder(strategy.clone())
            .store(Arc::new(store.clone()))
            .build()
            .unwrap();
        let t = m.token().await.unwrap();
        assert_eq!(strategy.calls(), 1, "re-authenticated");
        assert_eq!(t.generation(), 1);
        assert_eq!(corrupt_files(&d.0), 1, "the damaged file was kept aside");
        assert_eq!(
            store.load().await.unwrap().unwrap().generation,
            1,
            "the new token was stored"
        );
    }

    #[tokio::test]
    async fn a_wrong_key_stops_the_manager_and_keeps_the_file() {
        let d = dir("mgr-wrongkey");
        let store = FileStore::new(d.0.join("t"), key(KEY_A));
        save(&store, &token(4)).await;
        let before = std::fs::read(store.path()).unwrap();
        let strategy = ScriptedStrategy::new(Duration::from_secs(3600), Duration::ZERO);
        let wrong = FileStore::new(d.0.join("t"), key(KEY_B));
        let m = TokenManager::builder(strategy.clone())
            .store(Arc::new(wrong))
            .build()
            .unwrap();
        let err = m.token().await.unwrap_err();
        assert!(
            matches!(&err, AuthError::Permanent { kind: PermanentKind::Configuration, detail } if detail.contains("wrong key")),
            "{err}"
        );
        assert_eq!(
            strategy.calls(),
            0,
            "no login that would overwrite a token we cannot read"
        );
        assert_eq!(std::fs::read(store.path()).unwrap(), before, "nothing lost");
    }
}

fn passphrase(params: KdfParams) -> KeySource {
    KeySource::Passphrase {
        passphrase: Secret::new("correct horse"),
        params,
    }
}

/// A file written under KDF parameters A, read and rewritten by a process configured with B:
/// the rewrite derives under B with a fresh salt, so the next process (B) opens it. (The key
/// cache used to be keyed by salt only: the file was stamped B but encrypted with A's key, and
/// the refresh-token chain was lost to WrongKey.)
#[tokio::test]
async fn a_file_rewritten_under_new_kdf_parameters_opens_under_them() {
    let d = dir("kdf-change");
    let a = KDF_FLOOR;
    let b = KdfParams { t: 3, ..KDF_FLOOR };
    let path = d.0.join("t");
    save(&FileStore::new(&path, passphrase(a)), &token(1)).await;
    let upgraded = FileStore::new(&path, passphrase(b));
    assert_eq!(upgraded.load().await.unwrap().unwrap().generation, 1);
    save(&upgraded, &token(2)).await;
    let next = FileStore::new(&path, passphrase(b));
    assert_eq!(next.load().await.unwrap().unwrap().generation, 2);
    // And back: a process still configured with A reads the B file and rewrites it under A.
    let back = FileStore::new(&path, passphrase(a));
    assert_eq!(back.load().await.unwrap().unwrap().generation, 2);
    save(&back, &token(3)).await;
    let again = FileStore::new(&path, passphrase(a));
    assert_eq!(again.load().await.unwrap().unwrap().generation, 3);
}

/// A header asking for absurd Argon2 costs is refused before anything is derived, naming the
/// file, and the file is left where it is (a load does not move it aside: it may be a file an
/// older version wrote with costlier parameters).
#[tokio::test]
async fn kdf_parameters_beyond_the_ceiling_in_a_header_are_refused_unread() {
    let d = dir("kdf-ceiling");
    let path = d.0.join("t");
    let store = FileStore::new(&path, passphrase(KDF_FLOOR));
    save(&store, &token(1)).await;
    for (at, value) in [(10usize, 1_000_000u32), (6, u32::MAX), (14, 64)] {
        let mut bytes = std::fs::read(&path).unwrap();
        let original = bytes.clone();
        bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let err = FileStore::new(&path, passphrase(KDF_FLOOR))
            .load()
            .await
            .unwrap_err();
        assert_eq!(err.kind, StoreErrorKind::Unsupported, "{err}");
        assert!(
            err.detail.contains("outside the accepted bounds") && err.detail.contains("/t"),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "left untouched");
        std::fs::write(&path, &original).unwrap();
    }
    let too_costly = KdfParams { t: 11, ..KDF_FLOOR };
    assert!(too_costly.validate().is_err());
    assert!(shiftkey_store::KDF_CEILING.validate().is_ok());
}
