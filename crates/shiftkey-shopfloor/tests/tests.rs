//! The SQLite sink: idempotent apply, atomic operation sets, watermark in the same transaction,
//! the feedback outbox.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shiftkey_shopfloor::{Document, OperationRecord, ProcessRecord, Sink, SqlSink};

fn t(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s)
}

fn op(uid: &str, seq: u32, text: &str) -> OperationRecord {
    OperationRecord {
        uid: uid.into(),
        occurrence: format!("occ-{uid}"),
        id: format!("OP-{seq}"),
        name: format!("Operation {seq}"),
        sequence: seq,
        work_area: Some("WA01".into()),
        allocated_time_s: Some(12.5),
        work_instructions: vec![Document {
            uid: format!("DS-{text}"),
            name: format!("{text}.pdf"),
            kind: "PDF".into(),
        }],
        resources: vec!["RS01".into()],
        consumed_parts: vec!["PN-1".into(), "PN-2".into()],
        obsolete: false,
    }
}

fn plan(uid: &str, modified: u64, ops: Vec<OperationRecord>) -> ProcessRecord {
    ProcessRecord {
        uid: uid.into(),
        id: format!("{uid}-ID"),
        revision: "A".into(),
        name: "Plan".into(),
        plant: "P01".into(),
        released: false,
        obsolete: false,
        last_modified: t(modified),
        current: None,
        operations: ops,
    }
}

/// Revision `revision` (UID `uid`) of the item `ITEM`, current or not.
fn revision(uid: &str, revision: &str, current: Option<bool>, op_uid: &str) -> ProcessRecord {
    ProcessRecord {
        id: "ITEM".into(),
        revision: revision.into(),
        current,
        ..plan(uid, 1, vec![op(op_uid, 10, revision)])
    }
}

/// The operations `current_process_segment` offers as work: (plan UID, operation UID).
async fn offered(s: &SqlSink) -> Vec<(String, String)> {
    use sqlx::Row as _;
    sqlx::query("SELECT process_uid, uid FROM current_process_segment ORDER BY process_uid, uid")
        .fetch_all(s.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get("process_uid"), r.get("uid")))
        .collect()
}

#[tokio::test]
async fn one_revision_of_an_item_is_current_and_only_its_operations_are_offered() {
    let (s, path) = sink("current").await;
    let a = revision("REV-A", "A", Some(true), "OA");
    s.apply(std::slice::from_ref(&a), t(1)).await.unwrap();
    assert_eq!(offered(&s).await, [("REV-A".to_owned(), "OA".to_owned())]);
    // B becomes current: A is superseded in the same transaction, and only B is offered.
    let b = revision("REV-B", "B", Some(true), "OB");
    s.apply(std::slice::from_ref(&b), t(2)).await.unwrap();
    let all = s.all().await.unwrap();
    let current: Vec<_> = all.iter().map(|p| (p.uid.as_str(), p.current)).collect();
    assert_eq!(current, [("REV-A", Some(false)), ("REV-B", Some(true))]);
    assert_eq!(offered(&s).await, [("REV-B".to_owned(), "OB".to_owned())]);
    assert!(
        s.torn().await.unwrap().is_empty(),
        "a superseded row is not torn"
    );
    // A read again as superseded: nothing to write (its mark is already 0), and B stays current.
    let a_superseded = revision("REV-A", "A", Some(false), "OA");
    assert_eq!(
        s.apply(std::slice::from_ref(&a_superseded), t(3))
            .await
            .unwrap()
            .unchanged,
        1
    );
    assert_eq!(s.all().await.unwrap(), vec![a_superseded, b.clone()]);
    // The rule turns back to A (B withdrawn): B is superseded.
    s.apply(&[revision("REV-A", "A", Some(true), "OA")], t(4))
        .await
        .unwrap();
    assert_eq!(offered(&s).await, [("REV-A".to_owned(), "OA".to_owned())]);
    // Revisions of other items are left alone.
    let other = plan("OTHER", 1, vec![op("OO", 10, "x")]);
    s.apply(
        &[ProcessRecord {
            current: Some(true),
            ..other
        }],
        t(5),
    )
    .await
    .unwrap();
    assert_eq!(offered(&s).await.len(), 2);
    let _ = std::fs::remove_file(path);
}

/// A revision superseded or marked current keeps matching its content hash (`current` is not
/// content), and a mark makes a stored revision current without reading it again.
#[tokio::test]
async fn marks_change_which_revision_is_current_without_touching_content() {
    let (s, path) = sink("marks").await;
    let a = revision("REV-A", "A", Some(true), "OA");
    let b = revision("REV-B", "B", Some(true), "OB");
    s.apply(std::slice::from_ref(&a), t(1)).await.unwrap();
    s.apply(std::slice::from_ref(&b), t(2)).await.unwrap();
    assert!(
        s.torn().await.unwrap().is_empty(),
        "superseded A still matches its hash"
    );
    let report = s
        .apply_marked(
            &[],
            &[shiftkey_shopfloor::CurrentMark {
                item_id: "ITEM".into(),
                uid: "REV-A".into(),
            }],
            t(3),
        )
        .await
        .unwrap();
    assert_eq!(report, shiftkey_shopfloor::ApplyReport::default());
    assert_eq!(offered(&s).await, [("REV-A".to_owned(), "OA".to_owned())]);
    assert!(s.torn().await.unwrap().is_empty());
    assert_eq!(
        s.watermark().await.unwrap(),
        Some(t(3)),
        "in the same commit"
    );
    // B read again as superseded: only its mark, not its rows, counts as the change.
    let b_superseded = revision("REV-B", "B", Some(false), "OB");
    assert_eq!(
        s.apply(std::slice::from_ref(&b_superseded), t(4))
            .await
            .unwrap()
            .unchanged,
        1
    );
    // A read again, unchanged and current: unchanged.
    assert_eq!(s.apply(&[a], t(5)).await.unwrap().unchanged, 1);
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn without_a_rule_every_revision_is_offered() {
    let (s, path) = sink("every").await;
    s.apply(
        &[
            revision("REV-A", "A", None, "OA"),
            revision("REV-B", "B", None, "OB"),
        ],
        t(1),
    )
    .await
    .unwrap();
    assert_eq!(offered(&s).await.len(), 2, "nothing decided: both offered");
    // Obsolete plans and operations are never offered.
    let mut obsolete = revision("REV-B", "B", None, "OB");
    obsolete.obsolete = true;
    s.apply(&[obsolete], t(2)).await.unwrap();
    assert_eq!(offered(&s).await, [("REV-A".to_owned(), "OA".to_owned())]);
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn a_version_2_database_gains_the_current_revision_and_is_read_again() {
    // Schema version 2 as shiftkey left it before the current revision.
    let (path, url) = old_database(
        "v2",
        &[
            "CREATE TABLE shopfloor_schema (version BIGINT NOT NULL)",
            "INSERT INTO shopfloor_schema (version) VALUES (2)",
            "CREATE TABLE process_definition (uid TEXT PRIMARY KEY, item_id TEXT NOT NULL, revision TEXT NOT NULL, name TEXT NOT NULL, plant TEXT NOT NULL, released BIGINT NOT NULL, obsolete BIGINT NOT NULL, last_modified_ms BIGINT NOT NULL, content_hash TEXT NOT NULL)",
            "CREATE TABLE process_segment (process_uid TEXT NOT NULL REFERENCES process_definition(uid), occurrence TEXT NOT NULL, uid TEXT NOT NULL, item_id TEXT NOT NULL, name TEXT NOT NULL, sequence BIGINT NOT NULL, work_area TEXT, allocated_time_s DOUBLE PRECISION, work_instructions_json TEXT NOT NULL, resources_json TEXT NOT NULL, consumed_parts_json TEXT NOT NULL, obsolete BIGINT NOT NULL, PRIMARY KEY (process_uid, occurrence))",
            "CREATE TABLE sync_state (id BIGINT PRIMARY KEY, watermark_ms BIGINT, reconciled_ms BIGINT)",
            "INSERT INTO sync_state (id, watermark_ms) VALUES (1, 1800000010000)",
            "INSERT INTO process_definition VALUES ('REV-A', 'ITEM', 'A', 'Plan', 'P01', 1, 0, 1800000010000, 'h1')",
            "INSERT INTO process_definition VALUES ('REV-B', 'ITEM', 'B', 'Plan', 'P01', 0, 0, 1800000010000, 'h2')",
            "INSERT INTO process_segment VALUES ('REV-A', 'occ', 'OA', 'OP-10', 'Operation 10', 10, NULL, NULL, '[]', '[]', '[]', 0)",
        ],
    )
    .await;
    let s = SqlSink::connect(&url).await.unwrap();
    assert_eq!(
        s.watermark().await.unwrap(),
        None,
        "the next cycle is a full read that asks the rule for every item"
    );
    let all = s.all().await.unwrap();
    assert_eq!(all.len(), 2, "plans stay");
    assert!(
        all.iter().all(|p| p.current.is_none()),
        "undecided until read"
    );
    // The content hashes stay (`current` is not content): the crash checks keep working.
    let hashes: Vec<String> =
        sqlx::query_scalar("SELECT content_hash FROM process_definition ORDER BY uid")
            .fetch_all(s.pool())
            .await
            .unwrap();
    assert_eq!(hashes, ["h1", "h2"]);
    assert_eq!(
        offered(&s).await,
        [("REV-A".to_owned(), "OA".to_owned())],
        "the view exists and offers what was offered before"
    );
    drop(s);
    // Connecting again changes nothing more.
    let again = SqlSink::connect(&url).await.unwrap();
    assert_eq!(again.all().await.unwrap().len(), 2);
    let _ = std::fs::remove_file(path);
}

/// An SQLite database an older shiftkey left behind, made with `ddl`: its path and URL.
async fn old_database(name: &str, ddl: &[&str]) -> (std::path::PathBuf, String) {
    let path = std::env::temp_dir().join(format!("shiftkey-sink-{name}-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let url = format!("sqlite://{}?mode=rwc", path.display());
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    for statement in ddl {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    pool.close().await;
    (path, url)
}

async fn sink(name: &str) -> (SqlSink, std::path::PathBuf) {
    let path = std::env::temp_dir().join(format!("shiftkey-sink-{name}-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&path);
    (
        SqlSink::connect(&format!("sqlite://{}?mode=rwc", path.display()))
            .await
            .unwrap(),
        path,
    )
}

#[tokio::test]
async fn apply_is_idempotent_and_replaces_operation_sets_atomically() {
    let (s, path) = sink("apply").await;
    let p1 = plan("P1", 10, vec![op("O1", 10, "fit"), op("O2", 20, "fasten")]);
    let r = s.apply(std::slice::from_ref(&p1), t(10)).await.unwrap();
    assert_eq!((r.inserted, r.updated, r.unchanged), (1, 0, 0));
    assert_eq!(
        s.apply(std::slice::from_ref(&p1), t(10))
            .await
            .unwrap()
            .unchanged,
        1,
        "same content: nothing written"
    );
    // A new revision drops O2 and edits O1: the set is replaced, not merged.
    let p1b = plan("P1", 20, vec![op("O1", 10, "fit and check")]);
    assert_eq!(
        s.apply(std::slice::from_ref(&p1b), t(20))
            .await
            .unwrap()
            .updated,
        1
    );
    assert_eq!(s.all().await.unwrap(), vec![p1b]);
    assert_eq!(s.watermark().await.unwrap(), Some(t(20)));
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn the_outbox_hands_out_unsent_feedback_in_order() {
    let (s, path) = sink("outbox").await;
    s.record_feedback("O1", 5, Some(61.5), "").await.unwrap();
    s.record_feedback("O2", 1, None, "scrap: burr")
        .await
        .unwrap();
    let pending = s.pending_feedback(10).await.unwrap();
    assert_eq!(
        pending
            .iter()
            .map(|f| f.operation_uid.as_str())
            .collect::<Vec<_>>(),
        vec!["O1", "O2"]
    );
    s.mark_feedback_sent(pending[0].id).await.unwrap();
    let pending = s.pending_feedback(10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].deviation, "scrap: burr");
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn a_version_1_database_is_migrated_and_read_again_from_the_start() {
    // What shiftkey 0.1 with schema version 1 left behind: a text column and a watermark.
    let (path, url) = old_database(
        "v1",
        &[
            "CREATE TABLE shopfloor_schema (version BIGINT NOT NULL)",
            "INSERT INTO shopfloor_schema (version) VALUES (1)",
            "CREATE TABLE process_definition (uid TEXT PRIMARY KEY, item_id TEXT NOT NULL, revision TEXT NOT NULL, name TEXT NOT NULL, plant TEXT NOT NULL, released BIGINT NOT NULL, obsolete BIGINT NOT NULL, last_modified_ms BIGINT NOT NULL, content_hash TEXT NOT NULL)",
            "CREATE TABLE process_segment (uid TEXT PRIMARY KEY, process_uid TEXT NOT NULL REFERENCES process_definition(uid), item_id TEXT NOT NULL, name TEXT NOT NULL, sequence BIGINT NOT NULL, work_area TEXT, allocated_time_s DOUBLE PRECISION, instructions TEXT NOT NULL, resources_json TEXT NOT NULL, consumed_parts_json TEXT NOT NULL, obsolete BIGINT NOT NULL)",
            "CREATE TABLE sync_state (id BIGINT PRIMARY KEY, watermark_ms BIGINT)",
            "INSERT INTO sync_state (id, watermark_ms) VALUES (1, 1800000010000)",
            "INSERT INTO process_definition VALUES ('P1', 'P1-ID', 'A', 'Plan', 'P01', 0, 0, 1800000010000, 'h')",
            "INSERT INTO process_segment VALUES ('O1', 'P1', 'OP-10', 'Operation 10', 10, NULL, NULL, 'old text', '[]', '[]', 0)",
        ],
    )
    .await;
    let s = SqlSink::connect(&url).await.unwrap();
    assert_eq!(
        s.watermark().await.unwrap(),
        None,
        "the next cycle reads everything again"
    );
    let all = s.all().await.unwrap();
    assert_eq!(all[0].uid, "P1", "plans stay");
    assert!(
        all[0].operations.is_empty(),
        "operation rows are rebuilt by the next read"
    );
    // The re-read plan is written again even though nothing else changed.
    let p1 = plan("P1", 10, vec![op("O1", 10, "fit")]);
    assert_eq!(
        s.apply(std::slice::from_ref(&p1), t(10))
            .await
            .unwrap()
            .updated,
        1
    );
    assert_eq!(s.all().await.unwrap(), vec![p1]);
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn one_operation_revision_in_two_plans_is_stored_under_both() {
    // A sub-process is a plan of its own and part of its parent: the same operation revision
    // appears under both, each with its own occurrence.
    let (s, path) = sink("shared-op").await;
    let mut in_parent = op("O1", 10, "fit");
    in_parent.occurrence = "occ-parent".into();
    let mut in_sub = op("O1", 10, "fit");
    in_sub.occurrence = "occ-sub".into();
    let parent = plan("P1", 10, vec![in_parent]);
    let sub = plan("P2", 10, vec![in_sub]);
    s.apply(&[parent.clone(), sub.clone()], t(10))
        .await
        .unwrap();
    let all = s.all().await.unwrap();
    assert_eq!(all, vec![parent.clone(), sub]);
    // Re-applying the parent (unchanged) does not take the operation from the sub-process.
    assert_eq!(s.apply(&[parent], t(11)).await.unwrap().unchanged, 1);
    assert_eq!(s.all().await.unwrap()[1].operations.len(), 1);
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn a_torn_plan_is_found_by_its_content_hash() {
    let (s, path) = sink("torn").await;
    let a = plan("P1", 1, vec![op("O1", 10, "a"), op("O2", 20, "b")]);
    let b = plan("P2", 1, vec![op("O3", 10, "c")]);
    s.apply(&[a, b], t(1)).await.unwrap();
    assert!(s.torn().await.unwrap().is_empty(), "a healthy database");
    // What a half-committed batch would leave: one of P1's operations gone.
    sqlx::query("DELETE FROM process_segment WHERE uid = 'O2'")
        .execute(s.pool())
        .await
        .unwrap();
    assert_eq!(s.torn().await.unwrap(), vec!["P1".to_owned()]);
    let _ = std::fs::remove_file(&path);
}

/// `inspect` reads a sink without changing it: a missing SQLite file stays missing (even with
/// `mode=rwc` in the URL), an empty sink is empty, a synced one shows its watermark, and a
/// database without the sink's tables is reported as such and left without them.
#[tokio::test]
async fn inspect_reads_a_sink_and_changes_nothing() {
    use shiftkey_shopfloor::SinkState;
    let path =
        std::env::temp_dir().join(format!("shiftkey-sink-inspect-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let url = format!("sqlite://{}?mode=rwc", path.display());
    assert_eq!(SqlSink::inspect(&url).await.unwrap(), SinkState::Missing);
    assert!(!path.exists(), "inspect created the database");
    // A database file that is not a sink (yet).
    std::fs::write(&path, b"").unwrap();
    assert_eq!(SqlSink::inspect(&url).await.unwrap(), SinkState::Missing);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        0,
        "inspect wrote to the file"
    );
    let s = SqlSink::connect(&url).await.unwrap();
    assert_eq!(SqlSink::inspect(&url).await.unwrap(), SinkState::Empty);
    s.apply(&[plan("P1", 10, vec![op("O1", 10, "fit")])], t(10))
        .await
        .unwrap();
    s.close().await;
    assert_eq!(
        SqlSink::inspect(&url).await.unwrap(),
        SinkState::Synced(t(10))
    );
    let _ = std::fs::remove_file(path);
}
