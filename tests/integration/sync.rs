//! The sync process under SIGKILL, and several instances behind one leader lease.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use shiftkey_auth::Clock;
use shiftkey_shopfloor::{ProcessRecord, SqlSink};
use shiftkey_sim::{ScaledClock, Sim, SimConfig};
use shiftkey_sync::{Engine, EngineConfig, Stop, map_plan};
use shiftkey_teamcenter::{ReadConfig, SessionConfig, TcClient};
use shiftkey_tests::postgres::PgServer;

const WORKER: &str = env!("CARGO_BIN_EXE_sync-worker");

async fn busy_sim() -> Sim {
    let mut cfg = SimConfig::default();
    cfg.session.load_by_hour = [1; 24];
    cfg.data.changes_per_hour = 60.0;
    #[allow(
        clippy::disallowed_methods,
        reason = "simulated time starts at the real wall time"
    )]
    let start = std::time::SystemTime::now();
    let clock: Arc<dyn Clock> = Arc::new(ScaledClock::new(start, 1440.0));
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
    let mut v: Vec<ProcessRecord> = all.plans.iter().map(|(p, o)| map_plan(p, o)).collect();
    v.sort_by(|a, b| a.uid.cmp(&b.uid));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_and_duplicates_nothing() {
    let sim = busy_sim().await;
    let path = std::env::temp_dir().join(format!("shiftkey-crash-sync-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let mut cycles_seen = 0;
    for i in 0..100u64 {
        let mut child = Command::new(WORKER)
            .args([sim.url(), url.clone()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(30 + (i * 37) % 170)).await;
        child.kill().unwrap(); // SIGKILL: mid-read, mid-transaction, mid-feedback, wherever it is
        child.wait().unwrap();
        cycles_seen += BufReader::new(child.stdout.take().unwrap()).lines().count();
    }
    assert!(
        cycles_seen > 20,
        "the workers got work done between kills: {cycles_seen} cycles"
    );
    // Restart once more, cleanly, with the source held still: the sink equals the source.
    sim.pause_changes(true);
    let sink = Arc::new(SqlSink::connect(&url).await.unwrap());
    let engine = Engine::new(tc(&sim), sink.clone(), EngineConfig::default());
    engine.cycle(&Stop::default()).await.unwrap();
    let stored = sink.all().await.unwrap();
    assert_eq!(stored.len(), 20, "no lost or duplicated process revision");
    assert_eq!(
        stored,
        truth(&sim).await,
        "no torn revision: every operation set is whole and current"
    );
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
    let (mut a, ca) = spawn();
    let (mut b, cb) = spawn();
    tokio::time::sleep(Duration::from_secs(3)).await;
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
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(load(follower_count) > before, "the follower took over");
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
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
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
    let (client, mut events) = AsyncClient::new(
        MqttOptions::new("shiftkey-test-sub", "127.0.0.1", broker.port()),
        64,
    );
    client.subscribe("plant/#", QoS::AtLeastOnce).await.unwrap();
    let mut messages = std::collections::BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while messages.len() < 20 && tokio::time::Instant::now() < deadline {
        if let Ok(Ok(Event::Incoming(Packet::Publish(p)))) =
            tokio::time::timeout(Duration::from_secs(1), events.poll()).await
        {
            assert!(p.retain, "retained");
            let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
            messages.insert(p.topic.clone(), v);
        }
    }
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
