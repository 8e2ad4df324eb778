//! [`SqlSink`]: the SQLite and PostgreSQL sinks, one implementation over `sqlx`'s `Any` driver.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};

use crate::{ApplyReport, Feedback, ProcessRecord, Sink, SinkError};

fn err(what: impl Into<String>) -> impl FnOnce(sqlx::Error) -> SinkError {
    let what = what.into();
    move |source| SinkError::new(what, source)
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn from_millis(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// The schema, version 3 (documented in `docs/shopfloor.md`). `{id}` is the backend's
/// auto-increment key type.
const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS shopfloor_schema (version BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS process_definition (
        uid TEXT PRIMARY KEY, item_id TEXT NOT NULL, revision TEXT NOT NULL, name TEXT NOT NULL,
        plant TEXT NOT NULL, released BIGINT NOT NULL, obsolete BIGINT NOT NULL,
        last_modified_ms BIGINT NOT NULL, content_hash TEXT NOT NULL, is_current BIGINT)",
    "CREATE INDEX IF NOT EXISTS process_definition_by_item ON process_definition (item_id)",
    SEGMENT_TABLE,
    "CREATE INDEX IF NOT EXISTS process_segment_by_uid ON process_segment (uid)",
    "CREATE TABLE IF NOT EXISTS sync_state (id BIGINT PRIMARY KEY, watermark_ms BIGINT, reconciled_ms BIGINT)",
    "CREATE TABLE IF NOT EXISTS feedback_outbox (
        id {id}, operation_uid TEXT NOT NULL, completed_count BIGINT NOT NULL,
        actual_cycle_time_s DOUBLE PRECISION, deviation TEXT NOT NULL, sent BIGINT NOT NULL DEFAULT 0)",
];

/// Operations, one row per occurrence of an operation in a process revision: the same operation
/// revision can appear in a plan and in a sub-process that is a plan of its own.
const SEGMENT_TABLE: &str = "CREATE TABLE IF NOT EXISTS process_segment (
        process_uid TEXT NOT NULL REFERENCES process_definition(uid), occurrence TEXT NOT NULL,
        uid TEXT NOT NULL, item_id TEXT NOT NULL, name TEXT NOT NULL, sequence BIGINT NOT NULL,
        work_area TEXT, allocated_time_s DOUBLE PRECISION, work_instructions_json TEXT NOT NULL,
        resources_json TEXT NOT NULL, consumed_parts_json TEXT NOT NULL, obsolete BIGINT NOT NULL,
        PRIMARY KEY (process_uid, occurrence))";

const VERSION: i64 = 3;

/// What the shop floor runs: the operations of each item's current revision (or of every
/// revision where none was decided), leaving out obsolete plans and operations. Created after
/// the tables (and their migration), since it names `is_current`.
const WORK_VIEW: &str = "current_process_segment AS
    SELECT s.process_uid, s.occurrence, s.uid, s.item_id, s.name, s.sequence, s.work_area,
        s.allocated_time_s, s.work_instructions_json, s.resources_json, s.consumed_parts_json,
        d.item_id AS process_item_id, d.revision AS process_revision, d.plant AS plant
    FROM process_segment s JOIN process_definition d ON d.uid = s.process_uid
    WHERE COALESCE(d.is_current, 1) = 1 AND d.obsolete = 0 AND s.obsolete = 0";

/// Version 2 → 3: which revision of an item is current. The column starts undecided (every
/// revision offered) and the watermark is cleared, so the next cycle is a full read that asks the
/// revision rule for every item. The content hashes stay: `current` is not part of them.
const MIGRATE_V2_TO_V3: &[&str] = &[
    "ALTER TABLE process_definition ADD COLUMN is_current BIGINT",
    "CREATE INDEX IF NOT EXISTS process_definition_by_item ON process_definition (item_id)",
    "UPDATE sync_state SET watermark_ms = NULL",
    "UPDATE shopfloor_schema SET version = 3",
];

/// Version 1 → 2: operations are keyed by (process, occurrence), work instructions are a list of
/// attached documents (datasets in Teamcenter, not text), and the last full read is kept. The
/// operation rows are rebuilt, and the watermark and stored versions are cleared, so the next
/// cycle reads every plan again and fills them: the sink is a replica of Teamcenter, nothing is
/// lost. Run in one transaction; a second instance migrating at the same time redoes the same
/// steps on an empty table.
const MIGRATE_V1_TO_V2: &[&str] = &[
    "DROP TABLE IF EXISTS process_segment",
    SEGMENT_TABLE,
    "CREATE INDEX IF NOT EXISTS process_segment_by_uid ON process_segment (uid)",
    "ALTER TABLE sync_state ADD COLUMN reconciled_ms BIGINT",
    "UPDATE process_definition SET content_hash = '', last_modified_ms = 0",
    "UPDATE sync_state SET watermark_ms = NULL",
];

/// A SQL sink: SQLite (`sqlite://path?mode=rwc`, `sqlite::memory:`) or PostgreSQL (`postgres://…`).
///
/// - Schema created on connect (versioned in `shopfloor_schema`).
/// - `apply`: one transaction: per process revision compare the content hash (skip unchanged),
///   upsert the `process_definition` row, replace its `process_segment` rows, then set the
///   watermark; commit. A crash before commit leaves the previous state whole.
#[derive(Clone)]
pub struct SqlSink {
    pool: AnyPool,
    #[cfg(feature = "test-util")]
    before_commit: Option<CommitHook>,
}

/// Called inside every `apply` transaction, after its rows and watermark are written and before
/// `COMMIT` (see [`SqlSink::with_before_commit`]). Feature `test-util`.
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub type CommitHook = std::sync::Arc<dyn Fn() + Send + Sync>;

impl std::fmt::Debug for SqlSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlSink").finish_non_exhaustive()
    }
}

/// What a sink database holds, as [`SqlSink::inspect`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SinkState {
    /// No database or no sink tables yet: the first sync creates them.
    Missing,
    /// The tables exist; nothing was synced yet.
    Empty,
    /// Synced up to this watermark.
    Synced(SystemTime),
}

/// Whether `e` says a table does not exist (PostgreSQL `42P01`, SQLite "no such table").
fn missing_table(e: &sqlx::Error) -> bool {
    e.as_database_error().is_some_and(|d| {
        d.code().is_some_and(|c| c == "42P01") || d.message().contains("no such table")
    })
}

/// An SQLite URL opened read-only (`mode=ro` in place of any other mode): nothing is created.
fn read_only(url: &str) -> String {
    if !url.starts_with("sqlite:") {
        return url.to_owned();
    }
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut params: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("mode="))
        .collect();
    params.push("mode=ro");
    format!("{base}?{}", params.join("&"))
}

impl SqlSink {
    /// Reads what the sink at `url` holds without changing anything: no schema created, no
    /// migration, an SQLite file opened read-only (and not created when missing). For health
    /// checks.
    ///
    /// # Example
    /// ```
    /// # async fn run() -> Result<(), shiftkey_shopfloor::SinkError> {
    /// use shiftkey_shopfloor::{SinkState, SqlSink};
    ///
    /// let state = SqlSink::inspect("sqlite:///nonexistent/shopfloor.db").await?;
    /// assert_eq!(state, SinkState::Missing);
    /// # Ok(()) }
    /// ```
    pub async fn inspect(url: &str) -> Result<SinkState, SinkError> {
        sqlx::any::install_default_drivers();
        #[cfg(feature = "sqlite")]
        if url.starts_with("sqlite:") {
            use std::str::FromStr as _;
            let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)
                .map_err(err(format!("read the URL {}", redact(url))))?;
            let file = options.get_filename();
            if file != std::path::Path::new(":memory:") && !file.exists() {
                return Ok(SinkState::Missing);
            }
        }
        let url = read_only(url);
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .map_err(err(format!("connect to {}", redact(&url))))?;
        let row = sqlx::query("SELECT watermark_ms FROM sync_state WHERE id = 1")
            .fetch_optional(&pool)
            .await;
        pool.close().await;
        let what = "read sync_state.watermark_ms";
        match row {
            Ok(Some(r)) => Ok(r
                .try_get::<Option<i64>, _>("watermark_ms")
                .map_err(err(what))?
                .map_or(SinkState::Empty, |ms| SinkState::Synced(from_millis(ms)))),
            Ok(None) => Ok(SinkState::Empty),
            Err(e) if missing_table(&e) => Ok(SinkState::Missing),
            Err(e) => Err(err(what)(e)),
        }
    }

    /// Connects and creates the schema.
    pub async fn connect(url: &str) -> Result<Self, SinkError> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        // SQLite: one writer; an in-memory database exists per connection.
        let max = if sqlite { 1 } else { 4 };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .connect(url)
            .await
            .map_err(err(format!("connect to {}", redact(url))))?;
        let id = if sqlite {
            "INTEGER PRIMARY KEY AUTOINCREMENT"
        } else {
            "BIGSERIAL PRIMARY KEY"
        };
        for ddl in SCHEMA {
            sqlx::query(&ddl.replace("{id}", id))
                .execute(&pool)
                .await
                .map_err(err("create schema"))?;
        }
        let version = sqlx::query("SELECT version FROM shopfloor_schema")
            .fetch_optional(&pool)
            .await
            .map_err(err("read schema version"))?
            .map(|r| r.try_get::<i64, _>("version"))
            .transpose()
            .map_err(err("read schema version"))?;
        // SQLite has no `CREATE OR REPLACE VIEW`, PostgreSQL no `CREATE VIEW IF NOT EXISTS`.
        let view = if sqlite {
            format!("CREATE VIEW IF NOT EXISTS {WORK_VIEW}")
        } else {
            format!("CREATE OR REPLACE VIEW {WORK_VIEW}")
        };
        match version {
            None => {
                let mut tx = pool.begin().await.map_err(err("create schema"))?;
                sqlx::query(&view)
                    .execute(&mut *tx)
                    .await
                    .map_err(err("create the view current_process_segment"))?;
                sqlx::query("INSERT INTO shopfloor_schema (version) VALUES ($1)")
                    .bind(VERSION)
                    .execute(&mut *tx)
                    .await
                    .map_err(err("record schema version"))?;
                tx.commit().await.map_err(err("create schema"))?;
            }
            Some(v @ (1 | 2)) => {
                let what = format!("migrate schema {v} → {VERSION}");
                let mut tx = pool.begin().await.map_err(err(what.clone()))?;
                let steps = if v == 1 {
                    [MIGRATE_V1_TO_V2, MIGRATE_V2_TO_V3].concat()
                } else {
                    MIGRATE_V2_TO_V3.to_vec()
                };
                for ddl in steps.iter().chain([&view.as_str()]) {
                    // PostgreSQL: a second instance migrating at once must not fail on the column.
                    let ddl = if sqlite {
                        (*ddl).to_owned()
                    } else {
                        ddl.replace("ADD COLUMN ", "ADD COLUMN IF NOT EXISTS ")
                    };
                    sqlx::query(&ddl)
                        .execute(&mut *tx)
                        .await
                        .map_err(err(format!("{what}: {ddl}")))?;
                }
                tx.commit().await.map_err(err(what))?;
                tracing::info!(
                    "shop-floor schema migrated from version {v} to {VERSION}; the next cycle reads every plan again"
                );
            }
            Some(VERSION) => {}
            Some(v) => {
                return Err(SinkError::plain(format!(
                    "schema version {v} is newer than this shiftkey knows ({VERSION}); upgrade shiftkey"
                )));
            }
        }
        if sqlite {
            sqlx::query("PRAGMA journal_mode=WAL")
                .execute(&pool)
                .await
                .map_err(err("enable WAL"))?;
        }
        Ok(Self {
            pool,
            #[cfg(feature = "test-util")]
            before_commit: None,
        })
    }

    /// A time column of the `sync_state` row (`watermark_ms`, `reconciled_ms`).
    async fn state_time(&self, column: &'static str) -> Result<Option<SystemTime>, SinkError> {
        let what = format!("read sync_state.{column}");
        let row = sqlx::query(&format!("SELECT {column} FROM sync_state WHERE id = 1"))
            .fetch_optional(&self.pool)
            .await
            .map_err(err(what.clone()))?;
        Ok(match row {
            Some(r) => r
                .try_get::<Option<i64>, _>(column)
                .map_err(err(what))?
                .map(from_millis),
            None => None,
        })
    }

    /// Calls `hook` inside every `apply` transaction, after its rows and watermark are written and
    /// before `COMMIT`: a crash test's worker says "inside a transaction now" from here (and the
    /// killer kills it there), and a tracer can time the commit. The hook must not block long:
    /// the transaction holds SQLite's one writer. A test hook: feature `test-util`.
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    #[must_use]
    pub fn with_before_commit(mut self, hook: CommitHook) -> Self {
        self.before_commit = Some(hook);
        self
    }

    /// The plans whose stored rows do not hash to the content hash written with them in the same
    /// transaction: a torn write (a plan row from one batch, its operations from another) would
    /// show here. Empty on a healthy database.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub async fn torn(&self) -> Result<Vec<String>, SinkError> {
        let recorded: std::collections::BTreeMap<String, String> =
            sqlx::query("SELECT uid, content_hash FROM process_definition")
                .fetch_all(&self.pool)
                .await
                .map_err(err("read content hashes"))?
                .iter()
                .map(|r| Ok((r.try_get("uid")?, r.try_get("content_hash")?)))
                .collect::<Result<_, sqlx::Error>>()
                .map_err(err("read content hashes"))?;
        Ok(self
            .all()
            .await?
            .iter()
            // An empty hash marks a row to be written again at its next read (a migration, or a
            // revision another one superseded): nothing to compare.
            .filter(|p| {
                recorded
                    .get(&p.uid)
                    .is_some_and(|h| !h.is_empty() && *h != content_hash(p))
            })
            .map(|p| p.uid.clone())
            .collect())
    }

    /// Closes the pool: waits for connections in use to come back, then closes them all. Call it
    /// before the runtime shuts down, so no connection is returned to a pool whose tasks are gone.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The pool (for tests and the feedback producer).
    #[must_use]
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Every stored process revision with its operations (for comparisons and status pages).
    pub async fn all(&self) -> Result<Vec<ProcessRecord>, SinkError> {
        let rows = sqlx::query("SELECT uid, item_id, revision, name, plant, released, obsolete, last_modified_ms, is_current FROM process_definition ORDER BY uid")
            .fetch_all(&self.pool)
            .await
            .map_err(err("read processes"))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let uid: String = r.try_get("uid").map_err(err("read uid"))?;
            let ops = sqlx::query(
                "SELECT occurrence, uid, item_id, name, sequence, work_area, allocated_time_s, work_instructions_json, resources_json, consumed_parts_json, obsolete FROM process_segment WHERE process_uid = $1 ORDER BY sequence, item_id, occurrence",
            )
            .bind(&uid)
            .fetch_all(&self.pool)
            .await
            .map_err(err("read operations"))?;
            let mut operations = Vec::with_capacity(ops.len());
            for o in ops {
                fn json<T: serde::de::DeserializeOwned + Default>(
                    o: &sqlx::any::AnyRow,
                    col: &str,
                ) -> Result<T, SinkError> {
                    let text: String = o.try_get(col).map_err(err(format!("read {col}")))?;
                    Ok(serde_json::from_str(&text).unwrap_or_default())
                }
                operations.push(crate::OperationRecord {
                    uid: o.try_get("uid").map_err(err("read uid"))?,
                    occurrence: o.try_get("occurrence").map_err(err("read occurrence"))?,
                    id: o.try_get("item_id").map_err(err("read item_id"))?,
                    name: o.try_get("name").map_err(err("read name"))?,
                    sequence: u32::try_from(
                        o.try_get::<i64, _>("sequence")
                            .map_err(err("read sequence"))?,
                    )
                    .unwrap_or(0),
                    work_area: o.try_get("work_area").map_err(err("read work_area"))?,
                    allocated_time_s: o
                        .try_get("allocated_time_s")
                        .map_err(err("read allocated_time_s"))?,
                    work_instructions: json(&o, "work_instructions_json")?,
                    resources: json(&o, "resources_json")?,
                    consumed_parts: json(&o, "consumed_parts_json")?,
                    obsolete: o
                        .try_get::<i64, _>("obsolete")
                        .map_err(err("read obsolete"))?
                        != 0,
                });
            }
            out.push(ProcessRecord {
                uid,
                id: r.try_get("item_id").map_err(err("read item_id"))?,
                revision: r.try_get("revision").map_err(err("read revision"))?,
                name: r.try_get("name").map_err(err("read name"))?,
                plant: r.try_get("plant").map_err(err("read plant"))?,
                released: r
                    .try_get::<i64, _>("released")
                    .map_err(err("read released"))?
                    != 0,
                obsolete: r
                    .try_get::<i64, _>("obsolete")
                    .map_err(err("read obsolete"))?
                    != 0,
                last_modified: from_millis(
                    r.try_get("last_modified_ms")
                        .map_err(err("read last_modified"))?,
                ),
                current: r
                    .try_get::<Option<i64>, _>("is_current")
                    .map_err(err("read is_current"))?
                    .map(|c| c != 0),
                operations,
            });
        }
        Ok(out)
    }

    /// Records an operation actual in the outbox (what a shop-floor system does).
    pub async fn record_feedback(
        &self,
        operation_uid: &str,
        completed_count: i64,
        actual_cycle_time_s: Option<f64>,
        deviation: &str,
    ) -> Result<(), SinkError> {
        sqlx::query("INSERT INTO feedback_outbox (operation_uid, completed_count, actual_cycle_time_s, deviation, sent) VALUES ($1, $2, $3, $4, 0)")
            .bind(operation_uid)
            .bind(completed_count)
            .bind(actual_cycle_time_s)
            .bind(deviation)
            .execute(&self.pool)
            .await
            .map_err(err("record feedback"))?;
        Ok(())
    }
}

/// The URL without its secrets, for error messages: the password of the authority (up to the
/// *last* `@`, as URL parsers read it) and any `password=` query parameter become `***`.
fn redact(url: &str) -> String {
    // A URL parser, not string surgery: a password holding `@`, `:` or `/`, an IPv6 host and a
    // query are all found where a driver finds them.
    let Ok(mut parsed) = url::Url::parse(url) else {
        return "(a database URL that does not parse)".to_owned();
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    if parsed.query().is_some() {
        let secret = |k: &str| {
            ["password", "sslpassword", "passfile"]
                .iter()
                .any(|s| k.eq_ignore_ascii_case(s))
        };
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let v = if secret(&k) {
                    "***".to_owned()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

/// The hash of a record's content: everything but `current`, which is compared on its own (a
/// revision superseded by another is not a changed revision, and its stored rows keep matching
/// their hash).
fn content_hash(p: &ProcessRecord) -> String {
    let content = ProcessRecord {
        current: None,
        ..p.clone()
    };
    let bytes = serde_json::to_vec(&content).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// One current revision per item: writing `p` as current supersedes the item's other revisions.
async fn supersede_others(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    p: &ProcessRecord,
) -> Result<(), SinkError> {
    if p.current != Some(true) {
        return Ok(());
    }
    sqlx::query(
        "UPDATE process_definition SET is_current = 0
         WHERE item_id = $1 AND uid <> $2 AND (is_current IS NULL OR is_current <> 0)",
    )
    .bind(&p.id)
    .bind(&p.uid)
    .execute(&mut **tx)
    .await
    .map_err(err(format!("supersede the other revisions of {}", p.id)))?;
    Ok(())
}

#[async_trait]
impl Sink for SqlSink {
    async fn apply(
        &self,
        batch: &[ProcessRecord],
        watermark: SystemTime,
    ) -> Result<ApplyReport, SinkError> {
        self.apply_marked(batch, &[], watermark).await
    }

    async fn apply_marked(
        &self,
        batch: &[ProcessRecord],
        marks: &[crate::CurrentMark],
        watermark: SystemTime,
    ) -> Result<ApplyReport, SinkError> {
        let mut report = ApplyReport::default();
        let mut tx = self.pool.begin().await.map_err(err("begin"))?;
        for p in batch {
            let hash = content_hash(p);
            let existing: Option<(String, Option<i64>)> = sqlx::query(
                "SELECT content_hash, is_current FROM process_definition WHERE uid = $1",
            )
            .bind(&p.uid)
            .fetch_optional(&mut *tx)
            .await
            .map_err(err(format!("read process {}", p.uid)))?
            .map(|r| Ok((r.try_get("content_hash")?, r.try_get("is_current")?)))
            .transpose()
            .map_err(err("read content_hash"))?;
            let current = p.current.map(i64::from);
            match existing {
                Some((h, c)) if h == hash && c == current => {
                    report.unchanged += 1;
                    continue;
                }
                Some((h, _)) if h == hash => {
                    // Only which revision is current changed.
                    sqlx::query("UPDATE process_definition SET is_current = $2 WHERE uid = $1")
                        .bind(&p.uid)
                        .bind(current)
                        .execute(&mut *tx)
                        .await
                        .map_err(err(format!("mark process {}", p.uid)))?;
                    supersede_others(&mut tx, p).await?;
                    report.updated += 1;
                    continue;
                }
                Some(_) => report.updated += 1,
                None => report.inserted += 1,
            }
            sqlx::query(
                "INSERT INTO process_definition (uid, item_id, revision, name, plant, released, obsolete, last_modified_ms, content_hash, is_current)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT (uid) DO UPDATE SET item_id = excluded.item_id, revision = excluded.revision, name = excluded.name,
                   plant = excluded.plant, released = excluded.released, obsolete = excluded.obsolete,
                   last_modified_ms = excluded.last_modified_ms, content_hash = excluded.content_hash,
                   is_current = excluded.is_current",
            )
            .bind(&p.uid)
            .bind(&p.id)
            .bind(&p.revision)
            .bind(&p.name)
            .bind(&p.plant)
            .bind(i64::from(p.released))
            .bind(i64::from(p.obsolete))
            .bind(millis(p.last_modified))
            .bind(&hash)
            .bind(p.current.map(i64::from))
            .execute(&mut *tx)
            .await
            .map_err(err(format!("upsert process {}", p.uid)))?;
            supersede_others(&mut tx, p).await?;
            // The operation set of a revision is replaced as a whole.
            sqlx::query("DELETE FROM process_segment WHERE process_uid = $1")
                .bind(&p.uid)
                .execute(&mut *tx)
                .await
                .map_err(err(format!("clear operations of {}", p.uid)))?;
            for o in &p.operations {
                sqlx::query(
                    "INSERT INTO process_segment (uid, process_uid, item_id, name, sequence, work_area, allocated_time_s, work_instructions_json, resources_json, consumed_parts_json, obsolete, occurrence)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                     ON CONFLICT (process_uid, occurrence) DO UPDATE SET uid = excluded.uid, item_id = excluded.item_id, name = excluded.name,
                       sequence = excluded.sequence, work_area = excluded.work_area, allocated_time_s = excluded.allocated_time_s,
                       work_instructions_json = excluded.work_instructions_json, resources_json = excluded.resources_json,
                       consumed_parts_json = excluded.consumed_parts_json, obsolete = excluded.obsolete",
                )
                .bind(&o.uid)
                .bind(&p.uid)
                .bind(&o.id)
                .bind(&o.name)
                .bind(i64::from(o.sequence))
                .bind(o.work_area.clone())
                .bind(o.allocated_time_s)
                .bind(serde_json::to_string(&o.work_instructions).unwrap_or_else(|_| "[]".into()))
                .bind(serde_json::to_string(&o.resources).unwrap_or_else(|_| "[]".into()))
                .bind(serde_json::to_string(&o.consumed_parts).unwrap_or_else(|_| "[]".into()))
                .bind(i64::from(o.obsolete))
                .bind(if o.occurrence.is_empty() {
                    &o.uid
                } else {
                    &o.occurrence
                })
                .execute(&mut *tx)
                .await
                .map_err(err(format!("insert operation {}", o.uid)))?;
            }
        }
        // Items whose current revision was read earlier: that one is current, the others not.
        for m in marks {
            sqlx::query(
                "UPDATE process_definition SET is_current = CASE WHEN uid = $2 THEN 1 ELSE 0 END
                 WHERE item_id = $1",
            )
            .bind(&m.item_id)
            .bind(&m.uid)
            .execute(&mut *tx)
            .await
            .map_err(err(format!("mark the current revision of {}", m.item_id)))?;
        }
        sqlx::query("INSERT INTO sync_state (id, watermark_ms) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET watermark_ms = excluded.watermark_ms")
            .bind(millis(watermark))
            .execute(&mut *tx)
            .await
            .map_err(err("commit watermark"))?;
        #[cfg(feature = "test-util")]
        if let Some(hook) = &self.before_commit {
            hook();
        }
        tx.commit().await.map_err(err("commit"))?;
        Ok(report)
    }

    async fn items_without_current(&self) -> Result<Vec<String>, SinkError> {
        sqlx::query_scalar(
            "SELECT item_id FROM process_definition GROUP BY item_id
             HAVING MAX(COALESCE(is_current, 1)) = 0 ORDER BY item_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(err("read the items without a current revision"))
    }

    async fn stored_versions(
        &self,
        uids: &[String],
    ) -> Result<std::collections::BTreeMap<String, SystemTime>, SinkError> {
        let mut out = std::collections::BTreeMap::new();
        for chunk in uids.chunks(500) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT uid, last_modified_ms FROM process_definition WHERE uid IN ({})",
                placeholders.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for u in chunk {
                q = q.bind(u);
            }
            for r in q
                .fetch_all(&self.pool)
                .await
                .map_err(err("read stored versions"))?
            {
                out.insert(
                    r.try_get("uid").map_err(err("read uid"))?,
                    from_millis(
                        r.try_get("last_modified_ms")
                            .map_err(err("read last_modified"))?,
                    ),
                );
            }
        }
        Ok(out)
    }

    async fn reconciled(&self) -> Result<Option<SystemTime>, SinkError> {
        self.state_time("reconciled_ms").await
    }

    async fn mark_reconciled(&self, at: SystemTime) -> Result<(), SinkError> {
        sqlx::query("INSERT INTO sync_state (id, reconciled_ms) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET reconciled_ms = excluded.reconciled_ms")
            .bind(millis(at))
            .execute(&self.pool)
            .await
            .map_err(err("record the full read"))?;
        Ok(())
    }

    async fn watermark(&self) -> Result<Option<SystemTime>, SinkError> {
        self.state_time("watermark_ms").await
    }

    async fn pending_feedback(&self, limit: i64) -> Result<Vec<Feedback>, SinkError> {
        let rows = sqlx::query("SELECT id, operation_uid, completed_count, actual_cycle_time_s, deviation FROM feedback_outbox WHERE sent = 0 ORDER BY id LIMIT $1")
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(err("read feedback"))?;
        rows.into_iter()
            .map(|r| {
                Ok(Feedback {
                    id: r.try_get("id").map_err(err("read feedback id"))?,
                    operation_uid: r
                        .try_get("operation_uid")
                        .map_err(err("read operation_uid"))?,
                    completed_count: r
                        .try_get("completed_count")
                        .map_err(err("read completed_count"))?,
                    actual_cycle_time_s: r
                        .try_get("actual_cycle_time_s")
                        .map_err(err("read actual_cycle_time_s"))?,
                    deviation: r.try_get("deviation").map_err(err("read deviation"))?,
                })
            })
            .collect()
    }

    async fn mark_feedback_sent(&self, id: i64) -> Result<(), SinkError> {
        sqlx::query("UPDATE feedback_outbox SET sent = 1 WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(err("mark feedback sent"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redact_hides_every_password_form() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(
            redact("postgres://app:p@ss@db/x"),
            "postgres://app:***@db/x"
        );
        assert_eq!(
            redact("postgres://db/x?user=app&password=s3cret&sslmode=require"),
            "postgres://db/x?user=app&password=***&sslmode=require"
        );
        assert_eq!(
            redact("sqlite://shop.db?mode=rwc"),
            "sqlite://shop.db?mode=rwc"
        );
        assert!(!redact("postgres://a:b@c@d@host/x").contains('b'));
        assert_eq!(
            redact("postgres://app:pa%2Fss@[::1]:5432/x?sslpassword=k3y"),
            "postgres://app:***@[::1]:5432/x?sslpassword=***"
        );
        assert_eq!(redact("sqlite::memory:"), "sqlite::memory:");
        assert!(!redact("postgres://app:se cret@").contains("cret"));
    }
}
