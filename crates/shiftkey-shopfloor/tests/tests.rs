//! The SQLite sink: idempotent apply, atomic operation sets, watermark in the same transaction,
//! the feedback outbox.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shiftkey_shopfloor::{OperationRecord, ProcessRecord, Sink, SqlSink};

fn t(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s)
}

fn op(uid: &str, seq: u32, text: &str) -> OperationRecord {
    OperationRecord {
        uid: uid.into(),
        id: format!("OP-{seq}"),
        name: format!("Operation {seq}"),
        sequence: seq,
        work_area: Some("WA01".into()),
        allocated_time_s: Some(12.5),
        instructions: text.into(),
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
        operations: ops,
    }
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
