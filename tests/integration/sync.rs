//! The sync process under SIGKILL, and several instances behind one leader lease.

use std::io::{BufRead, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use shiftkey_auth::Clock;
use shiftkey_shopfloor::{ProcessRecord, Sink as _, SqlSink};
use shiftkey_sim::{ScaledClock, Sim, SimConfig};
use shiftkey_sync::{Engine, EngineConfig, Stop, map_plan};
use shiftkey_teamcenter::{ReadConfig, SessionConfig, TcClient};
use shiftkey_tests::postgres::PgServer;

const WORKER: &str = env!("CARGO_BIN_EXE_sync-worker");

async fn busy_sim() -> Sim {
    busy_sim_with(|_| {}).await
}

async fn busy_sim_with(f: impl FnOnce(&mut SimConfig)) -> Sim {
    let mut cfg = SimConfig::default();
    cfg.session.load_by_hour = [1; 24];
    cfg.data.changes_per_hour = 60.0;
    #[allow(
        clippy::disallowed_methods,
        reason = "simulated time starts at the real wall time"
    )]
    let start = std::time::SystemTime::now();
    let clock: Arc<dyn Clock> = Arc::new(ScaledClock::new(start, 1440.0));
    f(&mut cfg);
    Sim::start(cfg, clock).await.unwrap()
}

fn tc(sim: &Sim) -> TcClient {
    TcClient::session(
        reqwest::Client::new(),
        SessionConfig::new(sim.url().parse().unwrap(), "mfg_sync", "mfg_sync_pw".into()),
    )
    .unwrap()
}

async fn truth(sim: &Sim) -> Vec<ProcessRecord> {
    let all = tc(sim)
        .changed_since(None, &ReadConfig::default())
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

/// The site property the crash test's feedback goes to.
const FEEDBACK_KEY: &str = "xx4_mes_feedback_key";

/// What a kill must never break, checked on the database right after the kill, before any other
/// process touches it: no plan lost, no version or watermark going back, no torn plan (a stored
/// plan's rows disagree with the content hash written with them), and no feedback written twice.
struct Durable {
    versions: std::collections::BTreeMap<String, std::time::SystemTime>,
    watermark: Option<std::time::SystemTime>,
}

impl Durable {
    /// `killed_row`: the feedback row the kill landed on, just written and not yet marked sent.
    async fn check(
        &mut self,
        kill: usize,
        url: &str,
        sim: &Sim,
        rows: &[i64],
        killed_row: Option<i64>,
    ) {
        let sink = SqlSink::connect(url).await.unwrap();
        let stored = sink.all().await.unwrap();
        let watermark = sink.watermark().await.unwrap();
        let pending: Vec<i64> = sink
            .pending_feedback(1_000)
            .await
            .unwrap()
            .iter()
            .map(|f| f.id)
            .collect();
        sink.close().await;
        assert!(
            watermark >= self.watermark,
            "kill {kill}: the watermark went back"
        );
        for (uid, v) in &self.versions {
            let now = stored
                .iter()
                .find(|p| &p.uid == uid)
                .map(|p| p.last_modified);
            assert!(
                now.is_some_and(|n| n >= *v),
                "kill {kill}: plan {uid} was lost or went back"
            );
        }
        // No plan torn: every stored plan's rows hash to the content hash written with them in
        // the same transaction. (Comparing with the source cannot say it: edits inside a plan's
        // structure need not move its date, in Teamcenter as in the emulator.)
        let torn = {
            let sink = SqlSink::connect(url).await.unwrap();
            let torn = sink.torn().await.unwrap();
            sink.close().await;
            torn
        };
        assert!(torn.is_empty(), "kill {kill}: torn plans {torn:?}");
        if let Some(id) = killed_row {
            let written = sim
                .with_data(|d| d.times_written(FEEDBACK_KEY, &format!("shiftkey-feedback-{id}")));
            assert!(
                written == 1 && pending.contains(&id),
                "kill {kill}: the kill did not land between feedback row {id}'s write \
                 (written {written} times) and its outbox mark (pending: {})",
                pending.contains(&id)
            );
        }
        for id in rows {
            let written = sim
                .with_data(|d| d.times_written(FEEDBACK_KEY, &format!("shiftkey-feedback-{id}")));
            assert!(
                written <= 1,
                "kill {kill}: feedback row {id} was written {written} times"
            );
            if !pending.contains(id) {
                assert_eq!(
                    written, 1,
                    "kill {kill}: row {id} is marked sent but was never written"
                );
            }
        }
        self.versions = stored
            .into_iter()
            .map(|p| (p.uid, p.last_modified))
            .collect();
        self.watermark = watermark;
    }
}

/// 100 SIGKILLs, each landing where the worker said it was and held still: 50 inside a sink
/// transaction (rows written, not committed) and 50 between a feedback write to Teamcenter and the
/// outbox's "sent", each on a different row this push wrote itself. After every kill, before
/// anything heals, nothing durable is lost or torn, the row the kill landed on is written once
/// and still pending, and no feedback is written twice; at the end every feedback row reached
/// Teamcenter exactly once (the emulator counts the writes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_inside_transactions_and_feedback_pushes_loses_and_duplicates_nothing() {
    let sim = busy_sim_with(|cfg| {
        cfg.tc
            .site_properties
            .insert("MEOPRevision".into(), vec![FEEDBACK_KEY.into()]);
    })
    .await;
    let path = std::env::temp_dir().join(format!("shiftkey-crash-sync-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let url = format!("sqlite://{}?mode=rwc", path.display());
    // Feedback for 60 distinct operations waits in the outbox: each feedback kill lands on a row
    // written by the push it interrupts (the next push finds that one written and marks it), so
    // the 50 feedback kills take 50 rows and the final cycle pushes the rest.
    let rows: Vec<i64> = {
        let sink = SqlSink::connect(&url).await.unwrap();
        let ops: Vec<String> = truth(&sim)
            .await
            .iter()
            .flat_map(|p| p.operations.iter().map(|o| o.uid.clone()))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .take(60)
            .collect();
        for op in &ops {
            sink.record_feedback(op, 3, Some(41.5), "").await.unwrap();
        }
        let ids = sink
            .pending_feedback(1_000)
            .await
            .unwrap()
            .iter()
            .map(|f| f.id)
            .collect();
        sink.close().await;
        ids
    };
    let mut durable = Durable {
        versions: std::collections::BTreeMap::new(),
        watermark: None,
    };
    let (mut in_tx, mut killed_rows) = (0, std::collections::BTreeSet::new());
    for kill in 0..100usize {
        // Alternate the target. Only the workers killed in a feedback push push feedback: one
        // killed in a transaction after a cycle without changes would otherwise push the whole
        // outbox on its way to the next transaction.
        let want_feedback = kill % 2 == 1;
        let mut worker = Command::new(WORKER);
        worker
            .args([sim.url(), url.clone()])
            .env("SYNC_WORKER_PHASES", "1");
        if want_feedback {
            worker.env("SYNC_WORKER_FEEDBACK", FEEDBACK_KEY);
        }
        let mut child = worker
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // The worker holds still after saying where it is until told to go on (a line on its
        // stdin): SIGKILL lands there, however slow the machine.
        let mut go_on = child.stdin.take().unwrap();
        let landed = tokio::task::spawn_blocking(move || {
            let landed = loop {
                // A worker that says nothing for 20 s is stuck (a hang guard on a real-time
                // process, not a timing claim): the test fails below.
                match rx.recv_timeout(Duration::from_secs(20)) {
                    Ok(l)
                        if want_feedback
                            && l.starts_with("fb-written")
                            && l.ends_with(" fresh") =>
                    {
                        break Some(l);
                    }
                    Ok(l) if !want_feedback && l == "in-tx" => break Some(l),
                    // A phase passed over: the worker waits for the word to go on.
                    Ok(l) if l == "in-tx" || l.starts_with("fb-written") => {
                        // A worker that died cannot read it: the test fails below.
                        let _ = writeln!(go_on).and_then(|()| go_on.flush());
                    }
                    // A whole cycle pushed feedback without a fresh write: no row was left to
                    // kill on, and the test fails below. (A cycle without changes has no sink
                    // transaction; the next one will.)
                    Ok(l) if l == "cycle" && want_feedback => break None,
                    Ok(_) => {}
                    Err(_) => break None,
                }
            };
            // Kept open until the kill: closed, it would let the worker go on.
            (landed, go_on)
        });
        let (landed, go_on) = landed.await.unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        drop(go_on);
        let killed_row = match landed.as_deref() {
            Some("in-tx") => {
                in_tx += 1;
                None
            }
            Some(l) => {
                let row: i64 = l
                    .strip_prefix("fb-written ")
                    .and_then(|r| r.strip_suffix(" fresh"))
                    .and_then(|r| r.parse().ok())
                    .unwrap_or_else(|| panic!("kill {kill}: unexpected phase {l:?}"));
                assert!(
                    killed_rows.insert(row),
                    "kill {kill}: row {row} written twice"
                );
                Some(row)
            }
            None => panic!(
                "kill {kill}: the worker never reached {}",
                if want_feedback {
                    "a fresh feedback write"
                } else {
                    "a sink transaction"
                }
            ),
        };
        durable.check(kill, &url, &sim, &rows, killed_row).await;
    }
    assert_eq!(
        (in_tx, killed_rows.len()),
        (50, 50),
        "kills inside a sink transaction, and between a feedback row's write and its outbox mark"
    );
    // A clean cycle with the source held still: the sink equals the source, and every feedback
    // row reached Teamcenter exactly once.
    sim.pause_changes(true);
    let sink = Arc::new(SqlSink::connect(&url).await.unwrap());
    let engine = Engine::new(
        tc(&sim),
        sink.clone(),
        EngineConfig {
            feedback: Some(shiftkey_teamcenter::FeedbackConfig::new(FEEDBACK_KEY)),
            // A full read: edits that leave a plan's date (a new work instruction) come too.
            reconcile_every: Some(Duration::ZERO),
            ..EngineConfig::default()
        },
    );
    engine.cycle(&Stop::default()).await.unwrap();
    let stored = sink.all().await.unwrap();
    assert_eq!(
        stored,
        truth(&sim).await,
        "no lost, duplicated or torn revision"
    );
    for id in &rows {
        assert_eq!(
            sim.with_data(|d| d.times_written(FEEDBACK_KEY, &format!("shiftkey-feedback-{id}"))),
            1,
            "feedback row {id}"
        );
    }
    let _ = std::fs::remove_file(&path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_syncs_and_a_killed_leader_is_replaced() {
    let pg = PgServer::start();
    let sim = busy_sim().await;
    let sink_url = pg.url();
    // Create the schema once so the workers do not race on it.
    SqlSink::connect(&sink_url).await.unwrap();
    // Each worker prints a line per cycle it ran; count them as they come.
    let spawn = || {
        let mut child = Command::new(WORKER)
            .args([sim.url(), sink_url.clone(), pg.url()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (stdout, c) = (child.stdout.take().unwrap(), Arc::clone(&count));
        std::thread::spawn(move || {
            for _ in BufReader::new(stdout).lines().map_while(Result::ok) {
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        (child, count)
    };
    let load =
        |c: &Arc<std::sync::atomic::AtomicUsize>| c.load(std::sync::atomic::Ordering::SeqCst);
    // Real time: the workers are processes, and the lease lives in PostgreSQL.
    let (mut a, ca) = spawn();
    let (mut b, cb) = spawn();
    // The leader's own cycles measure the window: while it runs 10 (a second at least, with its
    // 100 ms pauses), the follower checks the lease every 50 ms and must never get it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while load(&ca).max(load(&cb)) < 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no instance ran 10 cycles in 60 s: a={} b={}",
            load(&ca),
            load(&cb)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (ran_a, ran_b) = (load(&ca), load(&cb));
    assert!(
        (ran_a > 0) != (ran_b > 0),
        "exactly one instance syncs while both live: a={ran_a} b={ran_b}"
    );
    // Kill the leader: the other takes over within a lease check.
    let (leader, follower_count) = if ran_a > 0 {
        (&mut a, &cb)
    } else {
        (&mut b, &ca)
    };
    leader.kill().unwrap();
    leader.wait().unwrap();
    let before = load(follower_count);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while load(follower_count) <= before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the follower did not take over in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for child in [&mut a, &mut b] {
        let _ = child.kill();
        let _ = child.wait();
    }
    sim.pause_changes(true);
    let sink = Arc::new(SqlSink::connect(&sink_url).await.unwrap());
    Engine::new(tc(&sim), sink.clone(), EngineConfig::default())
        .cycle(&Stop::default())
        .await
        .unwrap();
    assert_eq!(
        sink.all().await.unwrap(),
        truth(&sim).await,
        "PostgreSQL sink equals the source"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_gets_one_retained_isa95_message_per_process_before_the_watermark_moves() {
    use shiftkey_shopfloor::{MqttSink, Sink};

    let broker = shiftkey_tests::mqtt::Mosquitto::start();
    let sim = busy_sim().await;
    sim.pause_changes(true);
    let path = std::env::temp_dir().join(format!("shiftkey-mqtt-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let store = Arc::new(
        SqlSink::connect(&format!("sqlite://{}?mode=rwc", path.display()))
            .await
            .unwrap(),
    );
    let sink = Arc::new(MqttSink::new(
        "127.0.0.1",
        broker.port(),
        "shiftkey-test-pub",
        "plant",
        Arc::clone(&store),
    ));
    let engine = Engine::new(
        tc(&sim),
        sink.clone(),
        EngineConfig {
            batch: 4,
            ..EngineConfig::default()
        },
    );
    let report = engine.cycle(&Stop::default()).await.unwrap();
    assert_eq!(report.inserted, 20);
    assert!(sink.watermark().await.unwrap().is_some());

    // A subscriber that connects afterwards gets every retained message.
    let messages = shiftkey_tests::mqtt::retained(broker.port(), None, None, "plant/#", 20).await;
    let stored = store.all().await.unwrap();
    assert_eq!(messages.len(), stored.len());
    for record in &stored {
        let m = &messages[&shiftkey_shopfloor::topic("plant", record)];
        assert_eq!(m["OperationsDefinition"]["ID"], record.id);
        assert_eq!(m["OperationsDefinition"]["SourceUID"], record.uid);
        assert_eq!(
            m["OperationsDefinition"]["OperationsSegment"]
                .as_array()
                .unwrap()
                .len(),
            record.operations.len()
        );
    }
    let _ = std::fs::remove_file(&path);
}
