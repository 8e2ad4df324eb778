//! The engine against the emulator into SQLite, in compressed real time: the emulator and the
//! engine share a `ScaledClock` (1 440×: 15 simulated minutes take 0.625 s). Paused tokio time does
//! not fit here: SQLite runs on its own thread, and auto-advance would jump while a query is out.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::sync::Arc;
use std::time::Duration;

use shiftkey_auth::Clock;
use shiftkey_shopfloor::{ProcessRecord, Sink, SqlSink};
use shiftkey_sim::{ScaledClock, Sim, SimConfig};
use shiftkey_sync::{Engine, EngineConfig, Stop, map_plan};
use shiftkey_teamcenter::{FeedbackConfig, FeedbackValues, ReadConfig, SessionConfig, TcClient};

const H: u64 = 3600;

fn quiet() -> SimConfig {
    let mut c = SimConfig::default();
    c.session.load_by_hour = [1; 24];
    c.session.load_noise = 0;
    c
}

fn clock() -> Arc<dyn Clock> {
    clock_at(1440.0)
}

/// A clock `scale` times faster than real time.
fn clock_at(scale: f64) -> Arc<dyn Clock> {
    #[allow(
        clippy::disallowed_methods,
        reason = "simulated time starts at the real wall time"
    )]
    let start = std::time::SystemTime::now();
    Arc::new(ScaledClock::new(start, scale))
}

async fn sim(cfg: SimConfig, clock: &Arc<dyn Clock>) -> Sim {
    Sim::start(cfg, Arc::clone(clock)).await.unwrap()
}

fn tc(sim: &Sim, password: &str) -> TcClient {
    TcClient::session(
        reqwest::Client::new(),
        SessionConfig::new(sim.url().parse().unwrap(), "mfg_sync", password.into()),
    )
    .unwrap()
}

async fn sqlite(name: &str) -> Arc<SqlSink> {
    let path = std::env::temp_dir().join(format!("shiftkey-sync-{name}-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&path);
    Arc::new(
        SqlSink::connect(&format!("sqlite://{}?mode=rwc", path.display()))
            .await
            .unwrap(),
    )
}

/// The source's truth, read afresh and mapped the way the engine maps (the default rule).
async fn truth(sim: &Sim) -> Vec<ProcessRecord> {
    truth_under(sim, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_every_cycle_the_sink_equals_the_source() {
    let mut cfg = quiet();
    cfg.data.changes_per_hour = 12.0;
    let clock = clock();
    let sim = sim(cfg, &clock).await;
    let sink = sqlite("e2e").await;
    let engine = Engine::new(
        tc(&sim, "mfg_sync_pw"),
        sink.clone(),
        EngineConfig {
            batch: 3,
            ..EngineConfig::default()
        },
    )
    .with_clock(Arc::clone(&clock));
    let mut updated = 0;
    for cycle in 0..12 {
        // The changes due by now are applied, then the source holds still for the cycle and the
        // comparison (pausing after the cycle raced a change landing in between).
        sim.with_data(|_| ());
        sim.pause_changes(true);
        let report = engine.cycle(&Stop::default()).await.unwrap();
        if cycle == 0 {
            assert_eq!(report.inserted, 20);
        }
        updated += report.updated;
        assert_eq!(
            sink.all().await.unwrap(),
            truth(&sim).await,
            "cycle {cycle}"
        );
        sim.pause_changes(false);
        clock.sleep(Duration::from_secs(15 * 60)).await;
    }
    assert!(
        updated > 5,
        "the change stream reached the sink: {updated} updates"
    );
    assert!(sink.watermark().await.unwrap().is_some());
}

/// The revision of each plan's item in the sink: (item id, revision, current).
async fn revisions_of(sink: &SqlSink, item: &str) -> Vec<(String, Option<bool>)> {
    sink.all()
        .await
        .unwrap()
        .into_iter()
        .filter(|p| p.id == item)
        .map(|p| (p.revision, p.current))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// A plan's items whose operations the sink offers as work (`current_process_segment`).
async fn offered_revisions(sink: &SqlSink, item: &str) -> Vec<String> {
    use sqlx::Row as _;
    sqlx::query(
        "SELECT DISTINCT process_revision FROM current_process_segment WHERE process_item_id = $1",
    )
    .bind(item)
    .fetch_all(sink.pool())
    .await
    .unwrap()
    .iter()
    .map(|r| r.get("process_revision"))
    .collect()
}

/// #27 item 6: a new revision of a plan is synced as a revision of the same item; which one is
/// current is the server's revision rule's answer, the other is superseded and its operations
/// are not offered; the sink equals the truth after every step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_revision_rule_decides_which_revision_of_a_plan_is_current() {
    for rule in [None, Some("Any Status; Working")] {
        let clock = clock();
        let sim = sim(quiet(), &clock).await;
        sim.pause_changes(true);
        let sink = sqlite("current").await;
        let mut config = EngineConfig::default();
        config.read.current = shiftkey_teamcenter::CurrentRevision::ByRule {
            revision_rule: rule.map(str::to_owned),
        };
        let engine = Engine::new(tc(&sim, "mfg_sync_pw"), sink.clone(), config)
            .with_clock(Arc::clone(&clock));
        engine.cycle(&Stop::default()).await.unwrap();
        let (a, item) = sim.with_data(|d| {
            let p = d.changed_processes(std::time::UNIX_EPOCH)[0];
            (p.uid.clone(), p.get("item_id").unwrap().to_owned())
        });
        assert_eq!(
            revisions_of(&sink, &item).await,
            [("A".to_owned(), Some(true))]
        );
        // A is released, then revised: B is working.
        sim.with_data(|d| d.release(&a, "Released", clock.wall()));
        clock.sleep(Duration::from_secs(60)).await;
        let b = sim.with_data(|d| d.revise(&a, clock.wall())).unwrap();
        clock.sleep(Duration::from_secs(15 * 60)).await;
        let r = engine.cycle(&Stop::default()).await.unwrap();
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        let (current, superseded) = if rule.is_none() {
            ("B", "A") // the default, Latest Working: the newest working revision
        } else {
            ("A", "B") // Any Status first: the released A
        };
        assert_eq!(
            revisions_of(&sink, &item).await,
            [
                ("A".to_owned(), Some(current == "A")),
                ("B".to_owned(), Some(current == "B"))
            ],
            "rule {rule:?}: {superseded} superseded"
        );
        assert_eq!(offered_revisions(&sink, &item).await, [current]);
        // B released: under Any Status it takes over; under Latest Working (no working revision
        // left) the newest, B, stays.
        sim.with_data(|d| d.release(&b, "Released", clock.wall()));
        clock.sleep(Duration::from_secs(15 * 60)).await;
        engine.cycle(&Stop::default()).await.unwrap();
        assert_eq!(
            revisions_of(&sink, &item).await,
            [("A".to_owned(), Some(false)), ("B".to_owned(), Some(true))],
            "rule {rule:?}"
        );
        assert_eq!(offered_revisions(&sink, &item).await, ["B"]);
        assert_eq!(sink.all().await.unwrap(), truth_under(&sim, rule).await);
        assert_eq!(sim.leaked_windows(), 0, "the rule's windows are closed");
    }
}

/// The rule going back to a revision read in an earlier cycle: only the newer revision changed
/// (made obsolete), and the earlier one, not read again, becomes current in the same commit; the
/// item always has one revision offered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rule_going_back_to_an_earlier_revision_marks_it_current() {
    let clock = clock();
    let sim = sim(quiet(), &clock).await;
    sim.pause_changes(true);
    let sink = sqlite("current-back").await;
    let engine = Engine::new(
        tc(&sim, "mfg_sync_pw"),
        sink.clone(),
        EngineConfig::default(),
    )
    .with_clock(Arc::clone(&clock));
    let (a, item) = sim.with_data(|d| {
        let p = d.changed_processes(std::time::UNIX_EPOCH)[0];
        (p.uid.clone(), p.get("item_id").unwrap().to_owned())
    });
    engine.cycle(&Stop::default()).await.unwrap();
    clock.sleep(Duration::from_secs(60)).await;
    let b = sim.with_data(|d| d.revise(&a, clock.wall())).unwrap();
    clock.sleep(Duration::from_secs(15 * 60)).await;
    engine.cycle(&Stop::default()).await.unwrap();
    assert_eq!(offered_revisions(&sink, &item).await, ["B"]);
    // B is made obsolete: under Latest Working the newest working revision is A again.
    sim.with_data(|d| d.release(&b, "Obsolete", clock.wall()));
    clock.sleep(Duration::from_secs(15 * 60)).await;
    let r = engine.cycle(&Stop::default()).await.unwrap();
    assert_eq!(r.read, 1, "only B changed");
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    assert_eq!(
        revisions_of(&sink, &item).await,
        [("A".to_owned(), Some(true)), ("B".to_owned(), Some(false))]
    );
    assert_eq!(offered_revisions(&sink, &item).await, ["A"]);
    assert!(sink.torn().await.unwrap().is_empty());
    assert_eq!(sink.all().await.unwrap(), truth(&sim).await);
}

/// The truth under a named revision rule.
async fn truth_under(sim: &Sim, rule: Option<&str>) -> Vec<ProcessRecord> {
    let cfg = ReadConfig::default().with_current(shiftkey_teamcenter::CurrentRevision::ByRule {
        revision_rule: rule.map(str::to_owned),
    });
    let all = tc(sim, "mfg_sync_pw")
        .changed_since(None, &cfg)
        .await
        .unwrap();
    let mut v: Vec<ProcessRecord> = all
        .plans
        .iter()
        .map(|(p, o)| map_plan(p, o, &all.current))
        .collect();
    v.sort_by(|a, b| a.uid.cmp(&b.uid));
    v
}

/// `every_revision`: no rule is asked (no window beyond the plans'), every revision is offered;
/// a plan that names no item is not offered under a rule, with a cycle warning naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_rule_every_revision_is_offered_and_a_plan_without_item_warns() {
    let clock = clock();
    let sim = sim(quiet(), &clock).await;
    sim.pause_changes(true);
    let (a, item) = sim.with_data(|d| {
        let p = d.changed_processes(std::time::UNIX_EPOCH)[0];
        (p.uid.clone(), p.get("item_id").unwrap().to_owned())
    });
    sim.with_data(|d| d.revise(&a, clock.wall())).unwrap();
    let sink = sqlite("every").await;
    let mut config = EngineConfig::default();
    config.read.current = shiftkey_teamcenter::CurrentRevision::Every;
    let engine =
        Engine::new(tc(&sim, "mfg_sync_pw"), sink.clone(), config).with_clock(Arc::clone(&clock));
    engine.cycle(&Stop::default()).await.unwrap();
    assert_eq!(
        revisions_of(&sink, &item).await,
        [("A".to_owned(), None), ("B".to_owned(), None)]
    );
    assert_eq!(offered_revisions(&sink, &item).await.len(), 2);
    assert_eq!(
        sim.stats().windows_opened,
        21,
        "one window per plan revision, none for a rule"
    );

    // Under a rule, a plan whose revision names no item is not offered: its item still has B.
    let sink = sqlite("no-item").await;
    sim.with_data(|d| {
        d.object_mut(&a).unwrap().props.remove("items_tag");
    });
    let engine = Engine::new(
        tc(&sim, "mfg_sync_pw"),
        sink.clone(),
        EngineConfig::default(),
    )
    .with_clock(Arc::clone(&clock));
    let r = engine.cycle(&Stop::default()).await.unwrap();
    assert!(r.warnings.is_empty(), "the item has B: {:?}", r.warnings);
    assert_eq!(
        revisions_of(&sink, &item).await,
        [("A".to_owned(), Some(false)), ("B".to_owned(), Some(true))]
    );
    // A plan whose only revision names no item: its item gets no work, and every cycle says so
    // (also one that reads nothing), until it is resolved.
    let (lone, lone_item) = sim.with_data(|d| {
        let p = d
            .changed_processes(std::time::UNIX_EPOCH)
            .into_iter()
            .find(|p| p.get("item_id") != Some(item.as_str()))
            .unwrap();
        (p.uid.clone(), p.get("item_id").unwrap().to_owned())
    });
    sim.with_data(|d| {
        d.object_mut(&lone).unwrap().props.remove("items_tag");
        d.release(&lone, "Released", clock.wall());
    });
    clock.sleep(Duration::from_secs(15 * 60)).await;
    for cycle in 0..2 {
        let r = engine.cycle(&Stop::default()).await.unwrap();
        let w: Vec<_> = r
            .warnings
            .iter()
            .filter(|w| w.kind == "no_current_revision")
            .collect();
        assert_eq!(w.len(), 1, "cycle {cycle}: {:?}", r.warnings);
        assert!(w[0].detail.contains(&lone_item), "{}", w[0]);
        if cycle == 1 {
            assert_eq!(r.read, 0, "a cycle that reads nothing still says so");
        }
    }
    assert_eq!(offered_revisions(&sink, &lone_item).await.len(), 0);
}

/// A server in UTC−5 or UTC+5:30 with the default config (`utc_offset` auto): no change is
/// lost across a cycle boundary, also after a restart (a new client that has not seen the
/// server's dates yet), and no cycle warns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_in_another_time_zone_loses_no_change_with_the_default_config() {
    for offset in [-300, 330] {
        let mut cfg = quiet();
        cfg.data.changes_per_hour = 12.0;
        cfg.tc.utc_offset_minutes = offset;
        let clock = clock();
        let sim = sim(cfg, &clock).await;
        let sink = sqlite(&format!("zone{offset}")).await;
        let engine = |sink: Arc<SqlSink>| {
            Engine::new(tc(&sim, "mfg_sync_pw"), sink, EngineConfig::default())
                .with_clock(Arc::clone(&clock))
        };
        let mut current = engine(sink.clone());
        for cycle in 0..6 {
            if cycle == 3 {
                // A restart: the new client knows nothing of the server's offset yet.
                current = engine(sink.clone());
            }
            sim.with_data(|_| ());
            sim.pause_changes(true);
            let report = current.cycle(&Stop::default()).await.unwrap();
            assert!(report.warnings.is_empty(), "{:?}", report.warnings);
            assert_eq!(
                sink.all().await.unwrap(),
                truth(&sim).await,
                "UTC{offset:+} min, cycle {cycle}"
            );
            sim.pause_changes(false);
            clock.sleep(Duration::from_secs(15 * 60)).await;
        }
    }
}

/// Wrong settings that sync nothing, or miss changes, are warned about every cycle: a plan type
/// that matches nothing (on every full read), and a fixed offset the server's dates disagree
/// with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setting_that_syncs_nothing_or_misses_changes_is_a_cycle_warning() {
    let mut cfg = quiet();
    cfg.tc.utc_offset_minutes = -300;
    let clock = clock();
    let sim = sim(cfg, &clock).await;
    let sink = sqlite("warnings").await;
    let mut config = EngineConfig::default();
    config.read.process_types = vec!["MEProcessRevision".into(), "MEProcess".into()];
    config.read = config.read.with_utc_offset_minutes(0);
    let engine =
        Engine::new(tc(&sim, "mfg_sync_pw"), sink.clone(), config).with_clock(Arc::clone(&clock));
    let first = engine.cycle(&Stop::default()).await.unwrap();
    assert_eq!(first.inserted, 20, "the right type still syncs");
    let kinds: Vec<_> = first.warnings.iter().map(|w| w.kind).collect();
    assert_eq!(
        kinds,
        ["nothing_found", "utc_offset"],
        "{:?}",
        first.warnings
    );
    assert!(
        first.warnings[0].detail.contains("`MEProcess`"),
        "{}",
        first.warnings[0]
    );
    assert!(
        first.warnings[1].detail.contains("UTC-05:00") && first.warnings[1].detail.contains("late"),
        "{}",
        first.warnings[1]
    );
    // Every cycle, not only the first (the type check needs a full read; the offset does not).
    clock.sleep(Duration::from_secs(15 * 60)).await;
    let second = engine.cycle(&Stop::default()).await.unwrap();
    let kinds: Vec<_> = second.warnings.iter().map(|w| w.kind).collect();
    assert_eq!(kinds, ["utc_offset"]);
}

/// A 503 burst longer than the HTTP layer's attempts fails no cycle: the cycle waits and
/// resumes the read where it failed. A server that stays down fails the cycle once the resume
/// budget is spent (not a permanent error), and the next cycle catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_burst_longer_than_the_retries_fails_no_cycle() {
    let mut cfg = quiet();
    cfg.data.changes_per_hour = 12.0;
    let clock = clock();
    let sim = sim(cfg, &clock).await;
    let sink = sqlite("burst").await;
    // At 1 440× a real millisecond of this test machine is 1.4 simulated seconds: a resume
    // window of an hour of simulated time, so the check is about attempts, not about speed.
    let config = EngineConfig {
        resume_within: Duration::from_secs(3600),
        ..EngineConfig::default()
    };
    // The client on the same clock: the circuit breaker's cool-down is then simulated too.
    let client = TcClient::session_with_clock(
        reqwest::Client::new(),
        SessionConfig::new(sim.url().parse().unwrap(), "mfg_sync", "mfg_sync_pw".into()),
        Arc::clone(&clock),
    )
    .unwrap();
    let engine = Engine::new(client, sink.clone(), config).with_clock(Arc::clone(&clock));
    engine.cycle(&Stop::default()).await.unwrap();
    for burst in [3, 5] {
        clock.sleep(Duration::from_secs(15 * 60)).await;
        let before = sim.stats().faults.get("server_error").copied().unwrap_or(0);
        sim.fail_next(burst);
        sim.with_data(|_| ());
        sim.pause_changes(true);
        let report = engine.cycle(&Stop::default()).await;
        let report = report.unwrap_or_else(|e| panic!("a burst of {burst} failed the cycle: {e}"));
        assert_eq!(
            sim.stats().faults.get("server_error").copied().unwrap_or(0) - before,
            u64::from(burst)
        );
        assert_eq!(
            sink.all().await.unwrap(),
            truth(&sim).await,
            "burst {burst}"
        );
        assert!(report.read > 0 || report.already_synced > 0);
        sim.pause_changes(false);
    }
    // Down for good: the cycle fails after the resume budget, transiently.
    clock.sleep(Duration::from_secs(15 * 60)).await;
    sim.fail_next(10_000);
    let err = engine.cycle(&Stop::default()).await.unwrap_err();
    assert!(!err.is_permanent(), "{err}");
    sim.fail_next(0);
    // Held still for the catch-up cycle it compares: a change landing mid-cycle would be in the
    // truth and not yet in the sink.
    sim.with_data(|_| ());
    sim.pause_changes(true);
    engine.cycle(&Stop::default()).await.unwrap();
    assert_eq!(sink.all().await.unwrap(), truth(&sim).await);
}

/// The site-defined (BMIDE) properties [`feedback_config`] writes.
fn with_feedback_properties(cfg: &mut SimConfig) {
    cfg.tc.site_properties.insert(
        "MEOPRevision".into(),
        vec![
            "xx4_mes_feedback_key".into(),
            "xx4_completed_count".into(),
            "xx4_actual_cycle_time".into(),
            "xx4_deviation".into(),
            "xx4_mes".into(),
        ],
    );
}

fn feedback_config() -> FeedbackConfig {
    let mut fb = FeedbackConfig::new("xx4_mes_feedback_key");
    fb.completed_count = Some("xx4_completed_count".into());
    fb.actual_cycle_time = Some("xx4_actual_cycle_time".into());
    fb.deviation = Some("xx4_deviation".into());
    assert_eq!(fb.check(), Ok(()));
    fb
}

/// Replaying 1, 2 and 50 feedback rows of one operation (a push cut off after Teamcenter
/// and before the outbox, every row of it) writes nothing twice, and the server keeps the
/// newest row's values; the same with every field in one JSON property.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_feedback_rows_are_never_written_twice_and_the_newest_wins() {
    for json in [false, true] {
        for n in [1_i64, 2, 50] {
            let clock = clock();
            let mut cfg = quiet();
            with_feedback_properties(&mut cfg);
            let sim = sim(cfg, &clock).await;
            let sink = sqlite(&format!("replay-{json}-{n}")).await;
            let fb = if json {
                let mut fb = FeedbackConfig::new("xx4_mes");
                fb.format = shiftkey_teamcenter::FeedbackFormat::Json;
                fb
            } else {
                feedback_config()
            };
            let engine = Engine::new(
                tc(&sim, "mfg_sync_pw"),
                sink.clone(),
                EngineConfig {
                    feedback: Some(fb),
                    ..EngineConfig::default()
                },
            );
            engine.cycle(&Stop::default()).await.unwrap();
            let op = sink.all().await.unwrap()[0].operations[0].uid.clone();
            for i in 1..=n {
                sink.record_feedback(&op, i, Some(i as f64), &format!("row {i}"))
                    .await
                    .unwrap();
            }
            let writes = || {
                sim.stats()
                    .requests
                    .get("Core-2010-09-DataManagement/setProperties")
                    .copied()
                    .unwrap_or(0)
            };
            let first = engine.cycle(&Stop::default()).await.unwrap();
            assert_eq!(first.feedback_pushed, n as u64);
            assert_eq!(writes(), n as u64);
            // Every row replayed, oldest first.
            sqlx::query("UPDATE feedback_outbox SET sent = 0")
                .execute(sink.pool())
                .await
                .unwrap();
            let replay = engine.cycle(&Stop::default()).await.unwrap();
            assert_eq!(replay.feedback_pushed, 0, "json {json}, {n} rows");
            assert_eq!(
                writes(),
                n as u64,
                "no duplicate write, json {json}, {n} rows"
            );
            assert!(sink.pending_feedback(100).await.unwrap().is_empty());
            let held = |p: &str| sim.with_data(|d| d.get(&op).unwrap().get(p).map(str::to_owned));
            if json {
                let doc: serde_json::Value =
                    serde_json::from_str(&held("xx4_mes").unwrap()).unwrap();
                assert_eq!(doc["completed_count"], n, "{doc}");
                assert_eq!(doc["deviation"], format!("row {n}"), "{doc}");
            } else {
                assert_eq!(held("xx4_completed_count"), Some(n.to_string()));
                assert_eq!(held("xx4_actual_cycle_time"), Some(format!("{n}")));
                assert_eq!(held("xx4_deviation"), Some(format!("row {n}")));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_reaches_teamcenter_exactly_once_even_after_an_interrupted_push() {
    let clock = clock();
    let mut cfg = quiet();
    with_feedback_properties(&mut cfg);
    let sim = sim(cfg, &clock).await;
    let sink = sqlite("feedback").await;
    let client = tc(&sim, "mfg_sync_pw");
    let engine = Engine::new(
        client.clone(),
        sink.clone(),
        EngineConfig {
            feedback: Some(feedback_config()),
            ..EngineConfig::default()
        },
    );
    engine.cycle(&Stop::default()).await.unwrap();
    let op = sink.all().await.unwrap()[0].operations[0].uid.clone();
    sink.record_feedback(&op, 7, Some(58.0), "").await.unwrap();
    sink.record_feedback(&op, 8, Some(59.0), "late part")
        .await
        .unwrap();
    // The first push reached Teamcenter but the process died before marking it sent.
    let first = sink.pending_feedback(1).await.unwrap().remove(0);
    let values = FeedbackValues {
        completed_count: 7,
        actual_cycle_time_s: Some(58.0),
        deviation: "",
    };
    assert!(
        client
            .write_feedback(&feedback_config(), &op, values, first.id)
            .await
            .unwrap()
    );
    let report = engine.cycle(&Stop::default()).await.unwrap();
    assert_eq!(
        report.feedback_pushed, 1,
        "only the second row was written; the first was already there"
    );
    assert!(sink.pending_feedback(10).await.unwrap().is_empty());
    assert_eq!(
        sim.stats()
            .requests
            .get("Core-2010-09-DataManagement/setProperties"),
        Some(&2),
        "two rows, two writes in all"
    );
    assert_eq!(
        engine
            .cycle(&Stop::default())
            .await
            .unwrap()
            .feedback_pushed,
        0
    );
    assert_eq!(
        sim.with_data(|d| d.get(&op).unwrap().get("xx4_deviation").map(str::to_owned)),
        Some("late part".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_feedback_config_nothing_is_written_and_rows_wait() {
    let clock = clock();
    let sim = sim(quiet(), &clock).await;
    let sink = sqlite("nofeedback").await;
    let engine = Engine::new(
        tc(&sim, "mfg_sync_pw"),
        sink.clone(),
        EngineConfig::default(),
    );
    engine.cycle(&Stop::default()).await.unwrap();
    let op = sink.all().await.unwrap()[0].operations[0].uid.clone();
    sink.record_feedback(&op, 7, None, "").await.unwrap();
    assert_eq!(
        engine
            .cycle(&Stop::default())
            .await
            .unwrap()
            .feedback_pushed,
        0
    );
    assert_eq!(
        sink.pending_feedback(10).await.unwrap().len(),
        1,
        "kept for when it is configured"
    );
    assert!(
        !sim.stats()
            .requests
            .contains_key("Core-2010-09-DataManagement/setProperties")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_without_changes_costs_two_calls_and_opens_no_window() {
    let clock = clock();
    let sim = sim(quiet(), &clock).await;
    let sink = sqlite("nochange").await;
    let client = tc(&sim, "mfg_sync_pw");
    let engine = Engine::new(client.clone(), sink.clone(), EngineConfig::default())
        .with_clock(Arc::clone(&clock));
    // Held still from the start: a change landing between the first cycle's query and a later
    // pause would be read by the second cycle (#28 item 8).
    sim.pause_changes(true);
    engine.cycle(&Stop::default()).await.unwrap();
    let (calls, windows) = (client.calls(), sim.stats().windows_opened);
    let r = engine.cycle(&Stop::default()).await.unwrap();
    assert_eq!(r.read, 0);
    assert!(
        r.already_synced > 0,
        "the overlap returned plans the sink already holds"
    );
    assert_eq!(client.calls() - calls, 2, "the query and one load");
    assert_eq!(sim.stats().windows_opened, windows);
    assert_eq!(sim.leaked_windows(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structure_edits_that_leave_the_plan_date_are_caught_by_the_reconcile() {
    for reconcile in [Some(Duration::from_secs(2 * H)), None] {
        let mut cfg = quiet();
        cfg.data.structure_edit_moves_plan = false;
        cfg.data.changes_per_hour = 12.0;
        let clock = clock();
        let sim = sim(cfg, &clock).await;
        let sink = sqlite("reconcile").await;
        let engine = Engine::new(
            tc(&sim, "mfg_sync_pw"),
            sink.clone(),
            EngineConfig {
                reconcile_every: reconcile,
                ..EngineConfig::default()
            },
        )
        .with_clock(Arc::clone(&clock));
        assert!(
            engine.cycle(&Stop::default()).await.unwrap().reconciled,
            "the first read of an empty sink is a full read"
        );
        clock.sleep(Duration::from_secs(H)).await;
        let r = engine.cycle(&Stop::default()).await.unwrap();
        assert!(!r.reconciled);
        sim.pause_changes(true);
        assert_ne!(
            sink.all().await.unwrap(),
            truth(&sim).await,
            "a structure-only edit left the plan date alone: the incremental read missed it"
        );
        clock.sleep(Duration::from_secs(H + 60)).await;
        let r = engine.cycle(&Stop::default()).await.unwrap();
        assert_eq!(r.reconciled, reconcile.is_some());
        let equal = sink.all().await.unwrap() == truth(&sim).await;
        assert_eq!(equal, reconcile.is_some(), "reconcile every {reconcile:?}");
        // The sink keeps the time of the last full read: a restarted process (or `sync --once`
        // from cron) does not read everything again before it is due.
        let restarted = Engine::new(
            tc(&sim, "mfg_sync_pw"),
            sink.clone(),
            EngineConfig {
                reconcile_every: reconcile,
                ..EngineConfig::default()
            },
        )
        .with_clock(Arc::clone(&clock));
        assert!(!restarted.cycle(&Stop::default()).await.unwrap().reconciled);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feedback_row_teamcenter_refuses_stays_and_does_not_block_the_others() {
    let clock = clock();
    let mut cfg = quiet();
    with_feedback_properties(&mut cfg);
    let sim = sim(cfg, &clock).await;
    let sink = sqlite("feedback-refused").await;
    let engine = Engine::new(
        tc(&sim, "mfg_sync_pw"),
        sink.clone(),
        EngineConfig {
            feedback: Some(feedback_config()),
            ..EngineConfig::default()
        },
    );
    engine.cycle(&Stop::default()).await.unwrap();
    let op = sink.all().await.unwrap()[0].operations[0].uid.clone();
    // An operation revision that no longer exists, then a good row.
    sink.record_feedback("gone$x9QAAAAA", 1, None, "")
        .await
        .unwrap();
    sink.record_feedback(&op, 3, None, "").await.unwrap();
    let r = engine.cycle(&Stop::default()).await.unwrap();
    assert_eq!(r.feedback_pushed, 1);
    let pending = sink.pending_feedback(10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        pending[0].operation_uid, "gone$x9QAAAAA",
        "kept for an operator to look at"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_never_overlaps_and_catches_up_once() {
    let mut cfg = quiet();
    cfg.faults.latency_ms = 5 * 60 * 1000; // every call takes 5 simulated minutes: a cycle ≈ 25 min
    let clock = clock();
    let sim = sim(cfg, &clock).await;
    let sink = sqlite("schedule").await;
    // No revision rule asked: the cycle's calls (and so its length) are the read's alone.
    let mut config = EngineConfig::default();
    config.read.current = shiftkey_teamcenter::CurrentRevision::Every;
    let engine =
        Arc::new(Engine::new(tc(&sim, "mfg_sync_pw"), sink, config).with_clock(Arc::clone(&clock)));
    let stop = Stop::default();
    let runner = {
        let (engine, stop) = (Arc::clone(&engine), stop.clone());
        tokio::spawn(async move { engine.run(&stop, None).await })
    };
    clock.sleep(Duration::from_secs(3 * H)).await;
    stop.request();
    let cycles = runner.await.unwrap().unwrap();
    // 3 h of 15-minute slots is 12, but cycles of ~25 min run back to back without piling up
    // (7 such cycles fill 3 h; the bounds leave a cycle's slack either way for a loaded machine).
    assert!((5..=8).contains(&cycles), "{cycles} cycles");
    // A quick engine runs once per slot. The stop comes 8 simulated minutes after the 8th slot
    // and 7 before the 9th: at 360× that is over a real second either way, so a loaded machine
    // neither misses the 8th nor reaches the 9th.
    let clock = clock_at(360.0);
    let sim = self::sim(quiet(), &clock).await;
    let engine = Arc::new(
        Engine::new(
            tc(&sim, "mfg_sync_pw"),
            sqlite("schedule2").await,
            EngineConfig::default(),
        )
        .with_clock(Arc::clone(&clock)),
    );
    let stop = Stop::default();
    let runner = {
        let (engine, stop) = (Arc::clone(&engine), stop.clone());
        tokio::spawn(async move { engine.run(&stop, None).await })
    };
    clock.sleep(Duration::from_secs(2 * H - 7 * 60)).await;
    stop.request();
    assert_eq!(
        runner.await.unwrap().unwrap(),
        8,
        "one cycle per 15 minutes"
    );
}

/// A lease another process holds until the clock reaches `free_at`.
struct ScriptedLease {
    clock: Arc<dyn Clock>,
    free_at: tokio::time::Instant,
    asked: Arc<std::sync::atomic::AtomicU32>,
}

#[async_trait::async_trait]
impl shiftkey_sync::Lease for ScriptedLease {
    async fn ensure(&mut self) -> bool {
        self.asked
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.clock.now() >= self.free_at
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_takes_over_within_the_lease_check_not_a_whole_interval() {
    let clock = clock();
    let sim = sim(quiet(), &clock).await;
    let sink = sqlite("follower").await;
    // When each cycle finished, in simulated time.
    let finished = Arc::new(std::sync::Mutex::new(Vec::new()));
    let engine = {
        let (finished, at) = (Arc::clone(&finished), Arc::clone(&clock));
        Arc::new(
            Engine::new(
                tc(&sim, "mfg_sync_pw"),
                sink.clone(),
                EngineConfig::default(),
            )
            .with_clock(Arc::clone(&clock))
            .on_cycle(Arc::new(move |r| {
                finished.lock().unwrap().push((at.now(), r.is_ok()));
            })),
        )
    };
    // The leader dies 20 simulated minutes in: the lease is free from then on.
    let start = clock.now();
    let free_at = start + Duration::from_secs(20 * 60);
    let asked = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut lease = ScriptedLease {
        clock: Arc::clone(&clock),
        free_at,
        asked: Arc::clone(&asked),
    };
    let stop = Stop::default();
    let runner = {
        let (engine, stop) = (Arc::clone(&engine), stop.clone());
        tokio::spawn(async move { engine.run(&stop, Some(&mut lease)).await })
    };
    // Until then nothing is synced; the follower keeps asking (every 10 s, not every 15 min).
    clock.sleep(Duration::from_secs(19 * 60)).await;
    assert!(
        sink.all().await.unwrap().is_empty(),
        "a follower never syncs"
    );
    let before = asked.load(std::sync::atomic::Ordering::Relaxed);
    assert!(before > 20, "asked {before} times in 19 minutes");
    clock.sleep(Duration::from_secs(11 * 60)).await;
    stop.request();
    runner.await.unwrap().unwrap();
    // The first cycle ran as soon as the lease came free, long before the next 15-minute slot
    // (30 min in) an interval-long wait would have given (10 min is a generous allowance for a
    // debug build's cycle at 1 440× on a busy machine; the check itself is 10 s).
    let finished = finished.lock().unwrap().clone();
    let (first, ok) = *finished.first().expect("the new leader ran a cycle");
    assert!(ok, "the first cycle succeeded");
    assert!(first >= free_at, "no cycle before the lease was ours");
    assert!(
        first < free_at + Duration::from_secs(10 * 60),
        "the first cycle ended {:?} after the lease came free",
        first - free_at
    );
    assert_eq!(
        sink.all().await.unwrap().len(),
        20,
        "the whole site was synced"
    );
}

/// A standby holds no Teamcenter session: an hour of standing by costs the server no login and
/// no call (the session is logged in when a cycle first needs it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hour_of_standing_by_costs_the_server_nothing() {
    let clock = clock();
    let sim = sim(quiet(), &clock).await;
    let sink = sqlite("standby").await;
    let engine = Arc::new(
        Engine::new(
            tc(&sim, "mfg_sync_pw"),
            sink.clone(),
            EngineConfig::default(),
        )
        .with_clock(Arc::clone(&clock)),
    );
    let asked = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut lease = ScriptedLease {
        clock: Arc::clone(&clock),
        free_at: clock.now() + Duration::from_secs(100 * 3600),
        asked: Arc::clone(&asked),
    };
    let stop = Stop::default();
    let runner = {
        let (engine, stop) = (Arc::clone(&engine), stop.clone());
        tokio::spawn(async move { engine.run(&stop, Some(&mut lease)).await })
    };
    clock.sleep(Duration::from_secs(3600)).await;
    stop.request();
    assert_eq!(
        runner.await.unwrap().unwrap(),
        0,
        "no cycle without the lease"
    );
    assert!(asked.load(std::sync::atomic::Ordering::Relaxed) > 100);
    let stats = sim.stats();
    assert_eq!(stats.logins, 0, "{stats:?}");
    assert!(stats.requests.is_empty(), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jitter_spreads_the_slots() {
    let clock = clock();
    let sim = sim(quiet(), &clock).await;
    let cfg = EngineConfig {
        jitter: Duration::from_secs(14 * 60),
        seed: Some(5),
        ..EngineConfig::default()
    };
    let engine = Arc::new(
        Engine::new(tc(&sim, "mfg_sync_pw"), sqlite("jitter").await, cfg)
            .with_clock(Arc::clone(&clock)),
    );
    let stop = Stop::default();
    let runner = {
        let (engine, stop) = (Arc::clone(&engine), stop.clone());
        tokio::spawn(async move { engine.run(&stop, None).await })
    };
    clock.sleep(Duration::from_secs(2 * H - 7 * 60)).await;
    stop.request();
    let cycles = runner.await.unwrap().unwrap();
    // Real time at 1 440×: the range is what the jitter allows, not a timing claim, and a slot
    // lands near the stop only by the seed's chance.
    assert!(
        (4..8).contains(&cycles),
        "jittered slots are 15 to 29 minutes apart: {cycles} cycles in 113 minutes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_stop_the_engine_with_a_permanent_error() {
    let clock = clock();
    let sim = sim(quiet(), &clock).await;
    let engine = Engine::new(
        tc(&sim, "wrong"),
        sqlite("perm").await,
        EngineConfig::default(),
    )
    .with_clock(clock);
    let err = engine.run(&Stop::default(), None).await.unwrap_err();
    assert!(err.is_permanent(), "{err}");
    assert_eq!(sim.stats().login_failures, 1);
}

/// A hung Teamcenter fails the cycle at the read deadline, and the next cycle succeeds: the sink
/// then equals the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_server_fails_one_cycle_within_its_deadline_and_the_next_succeeds() {
    let clock = clock();
    let sim = sim(quiet(), &clock).await;
    let sink = sqlite("hang").await;
    // A real deadline (the emulator's hang is real). Kept short: each hung attempt costs it, and a
    // real second is 24 simulated minutes of session idling and data changes.
    let engine = Engine::new(
        tc(&sim, "mfg_sync_pw").with_read_timeout(Duration::from_millis(300)),
        sink.clone(),
        EngineConfig::default(),
    )
    .with_clock(Arc::clone(&clock));
    // Every attempt of the first read hangs (a read is tried three times).
    tc(&sim, "mfg_sync_pw").session_info().await.unwrap();
    sim.hang_next(shiftkey_sim::HangTarget::Reads, 3);
    let err = engine.cycle(&Stop::default()).await.unwrap_err();
    assert!(err.to_string().contains("timed out"), "{err}");
    assert_eq!(sim.stats().hung, 3);
    // Held still for the cycle it compares with the truth.
    sim.with_data(|_| ());
    sim.pause_changes(true);
    let report = engine.cycle(&Stop::default()).await.unwrap();
    assert_eq!(report.inserted, 20);
    assert_eq!(sink.all().await.unwrap(), truth(&sim).await);
}

/// A stop cancels the Teamcenter call in flight: a cycle hung on a read that would wait an hour
/// returns as soon as the stop comes, marked stopped, and nothing half-done reaches the sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_cancels_a_hung_read_at_once() {
    let clock = clock();
    let sim = sim(quiet(), &clock).await;
    let sink = sqlite("stop-hang").await;
    let engine = Arc::new(
        Engine::new(
            tc(&sim, "mfg_sync_pw").with_read_timeout(Duration::from_secs(3600)),
            sink.clone(),
            EngineConfig::default(),
        )
        .with_clock(Arc::clone(&clock)),
    );
    tc(&sim, "mfg_sync_pw").session_info().await.unwrap();
    sim.hang_next(shiftkey_sim::HangTarget::Reads, 1_000);
    let stop = Stop::default();
    let cycle = {
        let (engine, stop) = (Arc::clone(&engine), stop.clone());
        tokio::spawn(async move { engine.cycle(&stop).await })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while sim.stats().hung == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no read reached the emulator in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.request();
    // A guard against a hang, not a timing claim: without the cancel this waits an hour.
    let report = tokio::time::timeout(Duration::from_secs(120), cycle)
        .await
        .expect("the stop did not cancel the hung read")
        .unwrap()
        .unwrap();
    assert!(report.stopped);
    assert_eq!(report.inserted, 0);
    assert!(sink.all().await.unwrap().is_empty());
    assert_eq!(sink.watermark().await.unwrap(), None);
}

/// A lease held for the first `checks` questions, then lost.
struct LosingLease {
    checks: u32,
}

#[async_trait::async_trait]
impl shiftkey_sync::Lease for LosingLease {
    async fn ensure(&mut self) -> bool {
        let held = self.checks > 0;
        self.checks = self.checks.saturating_sub(1);
        held
    }
}

/// A leader that loses its lease in the middle of a cycle stops writing there: the batches
/// before the loss are committed, nothing after, no feedback pushed; the next leader's cycle
/// carries on from that watermark and the sink ends equal to the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_loses_its_lease_mid_cycle_stops_writing_there() {
    let clock = clock();
    let sim = sim(quiet(), &clock).await;
    sim.pause_changes(true);
    let sink = sqlite("lease-lost").await;
    let batch = 3;
    let op = truth(&sim).await[0].operations[0].uid.clone();
    sink.record_feedback(&op, 1, None, "").await.unwrap();
    let engine = Engine::new(
        tc(&sim, "mfg_sync_pw"),
        sink.clone(),
        EngineConfig {
            batch,
            feedback: Some(shiftkey_teamcenter::FeedbackConfig::new(
                "xx4_mes_feedback_key",
            )),
            ..EngineConfig::default()
        },
    )
    .with_clock(Arc::clone(&clock));
    let mut lease = LosingLease { checks: 2 };
    let r = engine
        .cycle_leased(&Stop::default(), Some(&mut lease))
        .await
        .unwrap();
    assert!(r.lease_lost, "{r:?}");
    assert!(
        r.read > 2 * batch,
        "the initial load has more than two batches: {r:?}"
    );
    let stored = sink.all().await.unwrap();
    assert_eq!(
        stored.len(),
        2 * batch,
        "two batches applied, then the lease was lost"
    );
    assert_eq!(r.feedback_pushed, 0);
    assert_eq!(
        sink.pending_feedback(10).await.unwrap().len(),
        1,
        "no feedback pushed"
    );
    // The new leader's cycle goes on from there.
    let r = engine.cycle(&Stop::default()).await.unwrap();
    assert!(!r.lease_lost);
    assert_eq!(sink.all().await.unwrap(), truth(&sim).await);
}
