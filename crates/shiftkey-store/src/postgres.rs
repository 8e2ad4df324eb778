//! [`PgStore`]: the same encrypted payload in PostgreSQL, refreshed under a row lock, with
//! `LISTEN/NOTIFY` telling other hosts a new token exists; and [`LeaderLease`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use shiftkey_auth::{StoreError, StoreErrorKind, StoreGuard, StoredToken, TokenStore};
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use sqlx::{Connection, Postgres, Row, Transaction};
use tokio::sync::Notify;

use crate::format::{self, DecodeError};
use crate::key::{KeySource, Keyring};

const CHANNEL: &str = "shiftkey_tokens";

fn db(what: &str, e: sqlx::Error) -> StoreError {
    let lock_timeout = e
        .as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "55P03");
    let kind = if lock_timeout {
        StoreErrorKind::LockTimeout
    } else {
        StoreErrorKind::Io
    };
    StoreError::new(kind, format!("PostgreSQL: {what}: {e}"))
}

/// How long one step of a [`PgStore`] (connecting, a query, a commit) waits for PostgreSQL.
/// Above the 10 s row-lock wait, so a busy row is a [`StoreErrorKind::LockTimeout`]; a database
/// that stopped answering (a host gone, a network cut) is an [`StoreErrorKind::Io`] error after
/// this long instead of a refresh stuck for good.
pub const STORE_DEADLINE: Duration = Duration::from_secs(15);

/// How long a connection handed back to the pool may take to show it still works.
const RELEASE_CHECK: Duration = Duration::from_secs(5);

/// Runs one database step with a client-side deadline; the error names the step.
async fn within<T>(
    what: &str,
    deadline: Duration,
    step: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(deadline, step)
        .await
        .map_err(|_| {
            StoreError::new(
                StoreErrorKind::Io,
                format!(
                    "PostgreSQL: {what}: no answer within {} s",
                    deadline.as_secs()
                ),
            )
        })?
        .map_err(|e| db(what, e))
}

/// Tokens in PostgreSQL, for several hosts sharing one credential (design §4.2, `docs/design.md`).
///
/// - Table `shiftkey_tokens` (created by an embedded migration), one row per credential, holding
///   the same AES-256-GCM payload as the file store: the database never sees a token in clear.
/// - [`TokenStore::lock`] opens a transaction and takes the row with `SELECT … FOR UPDATE`
///   (waiting at most `lock_timeout`); saving updates the row and queues a `NOTIFY`; unlocking
///   commits, which releases the lock and delivers the notification.
/// - [`TokenStore::changed`] resolves when another host stored a new token for this credential.
/// - A row cannot be rolled back unnoticed (format version 3): the payload carries its generation
///   in the authenticated header, which must match the row's `generation` column; a row once
///   written as version 3 (`format` column) refuses older payloads; and this store refuses a
///   generation or a format older than the newest it has read or written. A refused row is
///   [`StoreErrorKind::Corrupt`]: under the lock it is moved aside, and the token manager goes on
///   from the newer token it holds (or authenticates again), never from a spent refresh token.
#[derive(Debug, Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: PgPool,
    credential: String,
    keyring: Keyring,
    lock_timeout: Duration,
    changed: Arc<Notify>,
    listener: tokio::task::JoinHandle<()>,
    /// The newest generation and format version this store has read or written.
    seen: Seen,
}

/// A high-water mark of what a store has read or written for its credential.
#[derive(Debug, Default)]
struct Seen {
    generation: AtomicU64,
    version: AtomicU8,
}

impl Seen {
    fn record(&self, version: u8, generation: u64) {
        self.version.fetch_max(version, Ordering::AcqRel);
        self.generation.fetch_max(generation, Ordering::AcqRel);
    }
}

/// One row as read: its payload and the columns that say what it held before.
#[derive(Debug, Default)]
struct Stored {
    payload: Vec<u8>,
    /// The `generation` column.
    generation: i64,
    /// The `format` column: the version shiftkey last wrote there (0: not since it existed).
    format: i16,
}

impl Stored {
    fn from_pg(row: &sqlx::postgres::PgRow) -> Self {
        Self {
            payload: row.get("payload"),
            generation: row.get("generation"),
            format: row.get("format"),
        }
    }
}

/// Whether a payload whose header is `header` may be used from `row`, given what this store
/// has `seen`: no older format than the row was written in or this store has seen, a version-3
/// generation equal to the row's column, and no older generation than this store has seen.
fn admit(header: &format::Header, row: &Stored, seen: &Seen) -> Result<(), DecodeError> {
    let seen_version = seen.version.load(Ordering::Acquire);
    let floor = i16::from(seen_version).max(row.format);
    if i16::from(header.version) < floor {
        return Err(DecodeError::RolledBack(format!(
            "a format-{} payload where format {floor} was written",
            header.version
        )));
    }
    if let Some(g) = header.generation {
        if i64::try_from(g).ok() != Some(row.generation) {
            return Err(DecodeError::RolledBack(format!(
                "the payload is generation {g}, the row's generation column {}",
                row.generation
            )));
        }
        let newest = seen.generation.load(Ordering::Acquire);
        if g < newest {
            return Err(DecodeError::RolledBack(format!(
                "generation {g} is older than generation {newest}, read or written here before"
            )));
        }
    }
    Ok(())
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl PgStore {
    /// Connects to `url`, runs the migration, and listens for other hosts' updates of `credential`.
    ///
    /// Every step here and in the store's calls waits at most [`STORE_DEADLINE`].
    pub async fn connect(
        url: &str,
        credential: impl Into<String>,
        key: KeySource,
    ) -> Result<Self, StoreError> {
        let credential = credential.into();
        let pool = within(
            "connect",
            STORE_DEADLINE,
            PgPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(STORE_DEADLINE)
                // A connection handed back after a step timed out is tested before it rejoins
                // the pool; sqlx's own test has no deadline, and against a database that
                // vanished it would hold the pool's slots until TCP gives up.
                .after_release(|conn, _| {
                    Box::pin(async move {
                        match tokio::time::timeout(RELEASE_CHECK, conn.ping()).await {
                            Ok(Ok(())) => Ok(true),
                            Ok(Err(e)) => Err(e),
                            // An error closes it at once, without a goodbye to the server.
                            Err(_) => Err(sqlx::Error::PoolTimedOut),
                        }
                    })
                })
                .connect(url),
        )
        .await?;
        tokio::time::timeout(STORE_DEADLINE, sqlx::migrate!("./migrations").run(&pool))
            .await
            .map_err(|_| {
                StoreError::new(
                    StoreErrorKind::Io,
                    format!(
                        "PostgreSQL: migration: no answer within {} s",
                        STORE_DEADLINE.as_secs()
                    ),
                )
            })?
            .map_err(|e| {
                StoreError::new(StoreErrorKind::Io, format!("PostgreSQL: migration: {e}"))
            })?;
        let mut listener =
            within("listen", STORE_DEADLINE, PgListener::connect_with(&pool)).await?;
        within("listen", STORE_DEADLINE, listener.listen(CHANNEL)).await?;
        let changed = Arc::new(Notify::new());
        let notify = Arc::clone(&changed);
        let mine = credential.clone();
        let listener = tokio::spawn(async move {
            loop {
                match listener.recv().await {
                    Ok(n) if n.payload() == mine => notify.notify_waiters(),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "PostgreSQL notification listener failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                credential,
                keyring: Keyring::new(key),
                lock_timeout: Duration::from_secs(10),
                changed,
                listener,
                seen: Seen::default(),
            }),
        })
    }

    /// How many credentials the store at `url` holds, read-only (`None`: no table yet, the first
    /// [`PgStore::connect`] creates it); each step within [`STORE_DEADLINE`]. For health checks.
    pub async fn count(url: &str) -> Result<Option<u64>, StoreError> {
        let mut conn = within("connect", STORE_DEADLINE, sqlx::PgConnection::connect(url)).await?;
        let exists: bool = within(
            "read",
            STORE_DEADLINE,
            sqlx::query_scalar("SELECT to_regclass('shiftkey_tokens') IS NOT NULL")
                .fetch_one(&mut conn),
        )
        .await?;
        let count = if exists {
            let n: i64 = within(
                "read",
                STORE_DEADLINE,
                sqlx::query_scalar(
                    "SELECT count(*) FROM shiftkey_tokens WHERE generation >= 0 AND payload <> ''::bytea",
                )
                .fetch_one(&mut conn),
            )
            .await?;
            Some(u64::try_from(n).unwrap_or(0))
        } else {
            None
        };
        within("close", STORE_DEADLINE, conn.close()).await?;
        Ok(count)
    }

    /// The pool (for the leader lease and tests).
    #[must_use]
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }
}

impl Inner {
    /// What a row's payload is bound to: this credential, in PostgreSQL.
    fn binding(&self) -> format::Binding<'_> {
        format::Binding {
            kind: "postgres",
            name: &self.credential,
        }
    }

    fn decode(&self, row: &Stored) -> Result<Option<StoredToken>, StoreError> {
        let payload = &row.payload;
        if payload.is_empty() {
            return Ok(None);
        }
        let shown = format!("row `{}` of shiftkey_tokens", self.credential);
        format::parse_header(payload)
            .and_then(|h| {
                admit(&h, row, &self.seen)?;
                let key = self
                    .keyring
                    .key_for(h.kdf, &h.salt)
                    .map_err(|_| DecodeError::WrongKey)?;
                let token = format::decode(payload, &h, &key, self.binding())?;
                self.seen.record(h.version, token.generation);
                Ok(token)
            })
            .map(Some)
            .map_err(|e| e.into_store_error(&shown))
    }

    fn encode(&self, token: &StoredToken) -> Result<Vec<u8>, StoreError> {
        let (kdf, salt, key) = self.keyring.write_key()?;
        format::encode(token, kdf, &salt, &key, self.binding())
    }
}

struct PgGuard {
    inner: Arc<Inner>,
    tx: Option<Transaction<'static, Postgres>>,
    row: Stored,
}

#[async_trait]
impl StoreGuard for PgGuard {
    async fn load(&mut self) -> Result<Option<StoredToken>, StoreError> {
        match self.inner.decode(&self.row) {
            Err(e) if e.kind == StoreErrorKind::Corrupt => {
                // Keep the damaged payload for inspection in a side row, and start clean.
                if let Some(tx) = self.tx.as_mut() {
                    let aside = format!(
                        "{}.corrupt-{}",
                        self.inner.credential,
                        rand::random::<u32>()
                    );
                    within(
                        "move aside",
                        STORE_DEADLINE,
                        sqlx::query("INSERT INTO shiftkey_tokens (credential, generation, payload) VALUES ($1, -1, $2)")
                            .bind(&aside)
                            .bind(&self.row.payload)
                            .execute(&mut **tx),
                    )
                    .await?;
                    within(
                        "move aside",
                        STORE_DEADLINE,
                        sqlx::query(
                            "UPDATE shiftkey_tokens SET payload = ''::bytea WHERE credential = $1",
                        )
                        .bind(&self.inner.credential)
                        .execute(&mut **tx),
                    )
                    .await?;
                }
                Err(StoreError::new(
                    e.kind,
                    format!(
                        "{}; moved aside — the credential will re-authenticate",
                        e.detail
                    ),
                ))
            }
            other => other,
        }
    }

    async fn save(&mut self, token: &StoredToken) -> Result<(), StoreError> {
        // Generations only grow in a row: a token written after the row's payload was moved
        // aside (or by a login that could not read it) follows the newest generation the row
        // or this store has had, so no sibling mistakes it for a rollback.
        let newest = u64::try_from(self.row.generation)
            .unwrap_or(0)
            .max(self.inner.seen.generation.load(Ordering::Acquire));
        let bumped;
        let token = if token.generation < newest {
            let mut t = token.clone();
            t.generation = newest.saturating_add(1);
            bumped = t;
            &bumped
        } else {
            token
        };
        let payload = self.inner.encode(token)?;
        let generation = i64::try_from(token.generation).map_err(|_| {
            StoreError::new(
                StoreErrorKind::Io,
                "a generation beyond 2^63 cannot be stored in PostgreSQL",
            )
        })?;
        let tx = self
            .tx
            .as_mut()
            .ok_or_else(|| StoreError::new(StoreErrorKind::Io, "transaction already closed"))?;
        within(
            "save",
            STORE_DEADLINE,
            sqlx::query("UPDATE shiftkey_tokens SET generation = $2, payload = $3, format = $4, updated_at = now() WHERE credential = $1")
                .bind(&self.inner.credential)
                .bind(generation)
                .bind(&payload)
                .bind(i16::from(format::VERSION))
                .execute(&mut **tx),
        )
        .await?;
        within(
            "notify",
            STORE_DEADLINE,
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(&self.inner.credential)
                .execute(&mut **tx),
        )
        .await?;
        self.inner.seen.record(format::VERSION, token.generation);
        self.row = Stored {
            payload,
            generation,
            format: i16::from(format::VERSION),
        };
        Ok(())
    }

    async fn unlock(mut self: Box<Self>) -> Result<(), StoreError> {
        match self.tx.take() {
            Some(tx) => within("commit", STORE_DEADLINE, tx.commit()).await,
            None => Ok(()),
        }
    }
}

#[async_trait]
impl TokenStore for PgStore {
    async fn load(&self) -> Result<Option<StoredToken>, StoreError> {
        let row = within(
            "load",
            STORE_DEADLINE,
            sqlx::query(
                "SELECT payload, generation, format FROM shiftkey_tokens WHERE credential = $1",
            )
            .bind(&self.inner.credential)
            .fetch_optional(&self.inner.pool),
        )
        .await?;
        match row {
            Some(r) => self.inner.decode(&Stored::from_pg(&r)),
            None => Ok(None),
        }
    }

    async fn lock(&self) -> Result<Box<dyn StoreGuard>, StoreError> {
        let i = &self.inner;
        within(
            "create row",
            STORE_DEADLINE,
            sqlx::query("INSERT INTO shiftkey_tokens (credential) VALUES ($1) ON CONFLICT (credential) DO NOTHING")
                .bind(&i.credential)
                .execute(&i.pool),
        )
        .await?;
        let mut tx = within("begin", STORE_DEADLINE, i.pool.begin()).await?;
        let set_timeout = format!(
            "SET LOCAL lock_timeout = '{}ms'",
            i.lock_timeout.as_millis()
        );
        within(
            "lock timeout",
            STORE_DEADLINE,
            sqlx::query(&set_timeout).execute(&mut *tx),
        )
        .await?;
        let row = within(
            "lock row",
            STORE_DEADLINE,
            sqlx::query("SELECT payload, generation, format FROM shiftkey_tokens WHERE credential = $1 FOR UPDATE")
                .bind(&i.credential)
                .fetch_one(&mut *tx),
        )
        .await?;
        Ok(Box::new(PgGuard {
            inner: Arc::clone(i),
            tx: Some(tx),
            row: Stored::from_pg(&row),
        }))
    }

    async fn changed(&self) {
        self.inner.changed.notified().await;
    }
}

/// How long a leader lease waits for the database per step (connect, lock, ping).
pub const LEASE_DEADLINE: Duration = Duration::from_secs(10);

/// A leader lease: `pg_try_advisory_lock` held on a dedicated connection, so only one of N
/// instances syncs at a time; the lease is lost when that connection dies.
#[derive(Debug)]
pub struct LeaderLease {
    conn: Option<sqlx::PgConnection>,
    key: i64,
}

impl LeaderLease {
    /// Tries to become leader for `key`; `None` if another instance holds it.
    ///
    /// Connecting and asking take at most [`LEASE_DEADLINE`] each.
    pub async fn try_acquire(url: &str, key: i64) -> Result<Option<Self>, StoreError> {
        let mut conn = within(
            "lease connect",
            LEASE_DEADLINE,
            sqlx::PgConnection::connect(url),
        )
        .await?;
        let got: bool = within(
            "lease",
            LEASE_DEADLINE,
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(key)
                .fetch_one(&mut conn),
        )
        .await?;
        Ok(got.then_some(Self {
            conn: Some(conn),
            key,
        }))
    }

    /// Whether any session holds the lease on `key` in the database at `url`, read from
    /// `pg_locks` without taking it (a health check must not stand in a leader's way).
    pub async fn is_held_by_anyone(url: &str, key: i64) -> Result<bool, StoreError> {
        let mut conn = within(
            "lease connect",
            LEASE_DEADLINE,
            sqlx::PgConnection::connect(url),
        )
        .await?;
        // pg_advisory_lock(bigint) shows the key's high half as classid, its low half as objid.
        let held: bool = within(
            "lease",
            LEASE_DEADLINE,
            sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted \
                 AND objsubid = 1 \
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                 AND classid = ((($1::bigint) >> 32) & 4294967295)::oid \
                 AND objid = (($1::bigint) & 4294967295)::oid)",
            )
            .bind(key)
            .fetch_one(&mut conn),
        )
        .await?;
        within("lease close", LEASE_DEADLINE, conn.close()).await?;
        Ok(held)
    }

    /// Whether the lease is still held (its connection is alive). A `false` is final. A ping
    /// that gets no answer within [`LEASE_DEADLINE`] counts as a lost lease: a leader that
    /// cannot reach the database stops syncing rather than risk two leaders.
    pub async fn is_held(&mut self) -> bool {
        let alive = match self.conn.as_mut() {
            Some(c) => tokio::time::timeout(LEASE_DEADLINE, c.ping())
                .await
                .is_ok_and(|r| r.is_ok()),
            None => false,
        };
        if !alive {
            self.conn = None;
        }
        alive
    }

    /// Holds the lease for `period` while watching its connection: the database is asked to
    /// wait `period / 2` on it (`pg_sleep`), and must answer within `period`. `true` when it
    /// did: the lease is still ours. `false` at once when the connection drops (a server stop
    /// or restart ends the query with an error), or after `period` without an answer (a network
    /// cut): the lease counts as lost, and that is final. So a leader learns of a lost lease
    /// within `period`, without polling.
    pub async fn hold_for(&mut self, period: Duration) -> bool {
        let Some(conn) = self.conn.as_mut() else {
            return false;
        };
        let wait = (period / 2).as_secs_f64();
        let answered = tokio::time::timeout(
            period,
            sqlx::query("SELECT pg_sleep($1)").bind(wait).execute(conn),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        if !answered {
            self.conn = None;
        }
        answered
    }

    /// Gives the lease up.
    pub async fn release(mut self) -> Result<(), StoreError> {
        if let Some(mut c) = self.conn.take() {
            within(
                "lease release",
                LEASE_DEADLINE,
                sqlx::query("SELECT pg_advisory_unlock($1)")
                    .bind(self.key)
                    .execute(&mut c),
            )
            .await?;
            within("lease close", LEASE_DEADLINE, c.close()).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;
    use crate::format::{Binding, Kdf};

    const KEY: [u8; 32] = [7; 32];
    const ROW: Binding<'static> = Binding {
        kind: "postgres",
        name: "mes",
    };

    fn payload(version: u8, generation: u64) -> Vec<u8> {
        let token = format::test_token(generation);
        format::encode_version(&token, Kdf::Raw, &[0; 16], &KEY, ROW, version).unwrap()
    }

    fn check(version: u8, generation: u64, row: (i64, i16), seen: &Seen) -> Result<(), String> {
        let bytes = payload(version, generation);
        let header = format::parse_header(&bytes).unwrap();
        let row = Stored {
            payload: bytes,
            generation: row.0,
            format: row.1,
        };
        admit(&header, &row, seen).map_err(|e| match e {
            DecodeError::RolledBack(why) => why,
            other => panic!("{other:?}"),
        })
    }

    /// The audit's rollbacks: a version-1 payload in a row written as version 3, a payload
    /// restored without its generation column, and a whole row restored under a process that had
    /// seen a newer one.
    #[test]
    fn a_row_that_went_back_is_refused() {
        let fresh = Seen::default();
        // Before the row was ever written as version 3, older formats are read (and rewritten).
        assert_eq!(check(1, 4, (4, 0), &fresh), Ok(()));
        assert_eq!(check(2, 4, (4, 0), &fresh), Ok(()));
        assert_eq!(check(3, 4, (4, 0), &fresh), Ok(()));
        // Once written as version 3, an older format there is a replay.
        for old in [1, 2] {
            let why = check(old, 4, (4, 3), &fresh).unwrap_err();
            assert!(
                why.contains(&format!("format-{old} payload where format 3")),
                "{why}"
            );
        }
        // The payload's authenticated generation must be the row's.
        let why = check(3, 4, (7, 3), &fresh).unwrap_err();
        assert!(
            why.contains("generation 4, the row's generation column 7"),
            "{why}"
        );
        // A store that has seen generation 7 refuses a whole row restored at 4, and a format-2
        // payload once it has seen format 3, whatever the columns say.
        let seen = Seen::default();
        seen.record(3, 7);
        let why = check(3, 4, (4, 3), &seen).unwrap_err();
        assert!(why.contains("older than generation 7"), "{why}");
        assert!(check(2, 9, (9, 0), &seen).is_err());
        assert_eq!(check(3, 7, (7, 3), &seen), Ok(()));
        assert_eq!(check(3, 8, (8, 3), &seen), Ok(()));
    }
}
