//! The shop-floor side of a sync: a batch of process plans applied to a SQLite file, applied
//! again without change (nothing rewritten), then a new revision that becomes current; what the
//! shop floor runs is the view `current_process_segment`.
//!
//! Run: `cargo run -p shiftkey-shopfloor --example sqlite_sink` (offline; the database goes to a
//! temporary folder).

#![allow(clippy::print_stdout, reason = "an example shows what happens")]

use std::time::{Duration, SystemTime};

use shiftkey_shopfloor::{OperationRecord, ProcessRecord, Sink, SqlSink};

fn plan(uid: &str, revision: &str, ops: &[&str], at: SystemTime) -> ProcessRecord {
    let mut p = ProcessRecord {
        uid: uid.into(),
        id: "P01-PR0001".into(),
        revision: revision.into(),
        name: "Assemble pump housing".into(),
        plant: "P01".into(),
        released: true,
        obsolete: false,
        last_modified: at,
        current: Some(true),
        operations: Vec::new(),
    };
    for (i, name) in ops.iter().enumerate() {
        p.operations.push(OperationRecord {
            uid: format!("{uid}-op{i}"),
            occurrence: format!("{uid}-occ{i}"),
            id: format!("OP{:03}", (i + 1) * 10),
            name: (*name).into(),
            sequence: 10 * (u32::try_from(i).unwrap_or(u32::MAX) + 1),
            work_area: Some("Cell 4".into()),
            allocated_time_s: Some(42.0),
            work_instructions: Vec::new(),
            resources: Vec::new(),
            consumed_parts: Vec::new(),
            obsolete: false,
        });
    }
    p
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("shiftkey-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let url = format!("sqlite://{}?mode=rwc", dir.join("shopfloor.db").display());
    let sink = SqlSink::connect(&url).await?;
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);

    let a = plan("uid-A", "A", &["Press bearing", "Fit seal"], t0);
    let first = sink.apply(std::slice::from_ref(&a), t0).await?;
    let again = sink.apply(std::slice::from_ref(&a), t0).await?;
    println!("revision A: {first:?}; the same batch again: {again:?}");

    // Revision B adds an operation and is the current one: A is marked not current in the same
    // transaction.
    let t1 = t0 + Duration::from_secs(900);
    let b = plan(
        "uid-B",
        "B",
        &["Press bearing", "Fit seal", "Leak test"],
        t1,
    );
    let revised = sink.apply(&[b], t1).await?;
    println!(
        "revision B: {revised:?}; watermark {:?}",
        sink.watermark().await?
    );

    let mut db = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url).await?;
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT process_revision, name FROM current_process_segment ORDER BY sequence",
    )
    .fetch_all(&mut db)
    .await?;
    for (revision, name) in &rows {
        println!("the shop floor runs: revision {revision}, {name}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    if first.inserted != 1
        || again.unchanged != 1
        || rows.len() != 3
        || rows.iter().any(|r| r.0 != "B")
    {
        return Err(
            "expected one insert, an unchanged repeat, and revision B's three operations".into(),
        );
    }
    Ok(())
}
