//! The file store across real OS processes: sharing one rotated token, and surviving SIGKILL.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use shiftkey_auth::TokenStore;
use shiftkey_store::{FileStore, KeySource, LeaderLease, PgStore};
use shiftkey_tests::oidc::OidcServer;
use shiftkey_tests::postgres::PgServer;

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const WORKER: &str = env!("CARGO_BIN_EXE_store-worker");

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("shiftkey-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs 8 `store-worker` processes for `seconds` with `mode` (`share` or `share-pg`) on `target`;
/// returns their summaries.
async fn run_workers(
    mode: &str,
    target: &str,
    oidc: &OidcServer,
    seconds: u64,
) -> Vec<serde_json::Value> {
    let workers: Vec<_> = (0..8)
        .map(|_| {
            Command::new(WORKER)
                .args([
                    mode,
                    target,
                    KEY,
                    oidc.issuer().as_str(),
                    &seconds.to_string(),
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut summaries = Vec::new();
    for w in workers {
        let out = tokio::task::spawn_blocking(move || w.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        assert!(
            out.status.success(),
            "worker failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .to_owned();
        summaries.push(serde_json::from_str::<serde_json::Value>(&line).unwrap());
    }
    summaries
}

/// The protocol's promises, checked from the server's side and the workers' reports.
async fn assert_one_refresh_per_rotation(
    oidc: &OidcServer,
    stored: &shiftkey_auth::StoredToken,
    summaries: &[serde_json::Value],
) {
    let refreshes = oidc.successes("refresh_token", 0).await;
    let logins = oidc.successes("password", 0).await;
    let errors: Vec<_> = oidc
        .events()
        .into_iter()
        .filter(|e| e["event"] == "grant.error")
        .collect();
    assert!(errors.is_empty(), "no invalid_grant, no reuse: {errors:?}");
    assert_eq!(logins, 1, "one login for all eight processes");
    assert!(
        stored.generation >= 3,
        "several rotations happened: {}",
        stored.generation
    );
    assert_eq!(
        logins + refreshes,
        stored.generation as usize,
        "exactly one token-endpoint call per rotation"
    );
    for s in summaries {
        assert_eq!(
            s["inactive"], 0,
            "every process always held a valid token: {s}"
        );
        assert_eq!(s["errors"], 0, "{s}");
    }
    let adopted: u64 = summaries
        .iter()
        .map(|s| s["adopted"].as_u64().unwrap())
        .sum();
    assert!(
        adopted >= 7 * 2,
        "the others adopted rotations instead of refreshing: {adopted}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_processes_share_one_rotating_token_with_one_refresh_per_rotation() {
    let oidc = OidcServer::start(6);
    let dir = temp_dir("share");
    let path = dir.join("shared.token");
    let summaries = run_workers("share", path.to_str().unwrap(), &oidc, 14).await;
    let stored = FileStore::new(&path, KeySource::from_base64(KEY, "test").unwrap())
        .load()
        .await
        .unwrap()
        .unwrap();
    assert_one_refresh_per_rotation(&oidc, &stored, &summaries).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_hosts_share_one_rotating_token_through_postgresql() {
    let pg = PgServer::start();
    let oidc = OidcServer::start(6);
    let summaries = run_workers("share-pg", &pg.url(), &oidc, 14).await;
    let store = PgStore::connect(
        &pg.url(),
        "plant-sync",
        KeySource::from_base64(KEY, "test").unwrap(),
    )
    .await
    .unwrap();
    let stored = store.load().await.unwrap().unwrap();
    assert_one_refresh_per_rotation(&oidc, &stored, &summaries).await;
    let notified: u64 = summaries
        .iter()
        .map(|s| s["notified"].as_u64().unwrap())
        .sum();
    assert!(
        notified > 0,
        "LISTEN/NOTIFY told other hosts about new tokens: {summaries:?}"
    );
    // The payload in the database is ciphertext.
    let raw: Vec<u8> = sqlx_payload(&store).await;
    assert!(
        !String::from_utf8_lossy(&raw).contains("refresh"),
        "no plaintext in the database"
    );
}

async fn sqlx_payload(store: &PgStore) -> Vec<u8> {
    use sqlx::Row;
    sqlx::query("SELECT payload FROM shiftkey_tokens WHERE credential = 'plant-sync'")
        .fetch_one(store.pool())
        .await
        .unwrap()
        .get("payload")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_one_instance_holds_the_leader_lease_and_a_dead_holder_loses_it() {
    let pg = PgServer::start();
    let mut first = LeaderLease::try_acquire(&pg.url(), 42)
        .await
        .unwrap()
        .expect("first instance leads");
    assert!(
        LeaderLease::try_acquire(&pg.url(), 42)
            .await
            .unwrap()
            .is_none(),
        "a second instance waits"
    );
    assert!(first.is_held().await);
    // Kill the leader's connection from the server side: the lease is lost and another takes it.
    let killer = PgStore::connect(&pg.url(), "x", KeySource::from_base64(KEY, "test").unwrap())
        .await
        .unwrap();
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND objid = 42",
    )
    .execute(killer.pool())
    .await
    .unwrap();
    assert!(!first.is_held().await, "the lost lease is detected");
    let second = LeaderLease::try_acquire(&pg.url(), 42)
        .await
        .unwrap()
        .expect("another instance takes over");
    second.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_writes_never_tears_the_file_or_loses_a_rotation() {
    let dir = temp_dir("crash");
    let path = dir.join("crash.token");
    let store = FileStore::new(&path, KeySource::from_base64(KEY, "test").unwrap());
    let mut kills = 0;
    let mut last_durable = 0u64;
    for i in 0..200u64 {
        let mut child = Command::new(WORKER)
            .args(["write", path.to_str().unwrap(), KEY])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        // Every other worker is first seen writing (its first durable generation), so the writer
        // makes progress however slowly this machine starts processes; the others are killed
        // wherever they are, start-up included.
        let mut first = String::new();
        if i % 2 == 1 {
            stdout.read_line(&mut first).unwrap();
        }
        // Kill at a pseudo-random moment: 0-24 ms after start (or after that first write). Real
        // time: where a SIGKILL lands in another process is what this test varies.
        tokio::time::sleep(Duration::from_millis((i * 7919) % 25)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        if let Some(g) = std::iter::once(first)
            .chain(stdout.lines().map_while(Result::ok))
            .filter_map(|l| l.trim().parse::<u64>().ok())
            .last()
        {
            last_durable = last_durable.max(g);
        }
        match store.load().await.unwrap() {
            Some(t) => {
                assert_eq!(
                    t.refresh_token.as_ref().map(shiftkey_auth::Secret::expose),
                    Some(format!("rt-{}", t.generation).as_str()),
                    "complete, never torn"
                );
                assert!(
                    t.generation >= last_durable,
                    "a generation reported durable ({last_durable}) was lost (have {})",
                    t.generation
                );
            }
            None => assert_eq!(last_durable, 0),
        }
    }
    assert_eq!(kills, 200);
    assert!(
        last_durable > 10,
        "the writer made progress between kills: {last_durable}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Format v2 binds a row's payload to its credential: a database administrator who copies one
/// credential's payload over another's gets an error naming the row, not the other token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_copied_to_another_credentials_row_does_not_open() {
    use shiftkey_auth::StoreErrorKind;
    let pg = PgServer::start();
    let key = || KeySource::from_base64(KEY, "test").unwrap();
    let mes = PgStore::connect(&pg.url(), "mes", key()).await.unwrap();
    let erp = PgStore::connect(&pg.url(), "erp", key()).await.unwrap();
    for (store, generation) in [(&mes, 1), (&erp, 2)] {
        let mut guard = store.lock().await.unwrap();
        guard.save(&token(generation)).await.unwrap();
        guard.unlock().await.unwrap();
    }
    assert_eq!(erp.load().await.unwrap().unwrap().generation, 2);
    sqlx::query(
        "UPDATE shiftkey_tokens SET payload = (SELECT payload FROM shiftkey_tokens WHERE credential = 'mes') WHERE credential = 'erp'",
    )
    .execute(mes.pool())
    .await
    .unwrap();
    let err = erp.load().await.unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Corrupt, "{err}");
    assert!(err.detail.contains("row `erp`"), "{err}");
    assert_eq!(mes.load().await.unwrap().unwrap().generation, 1);
}

/// A row cannot be rolled back unnoticed (format 3): a payload restored without its generation
/// column is refused by anyone, a whole row restored is refused by a store that has seen a newer
/// one, the refused row is moved aside under the lock, and the next token written there follows
/// the row's last generation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_row_rolled_back_is_refused_and_moved_aside() {
    use shiftkey_auth::StoreErrorKind;
    use sqlx::Row;
    let pg = PgServer::start();
    let key = || KeySource::from_base64(KEY, "test").unwrap();
    let store = PgStore::connect(&pg.url(), "mes", key()).await.unwrap();
    let save = |generation: u64| {
        let store = store.clone();
        async move {
            let mut guard = store.lock().await.unwrap();
            guard.save(&token(generation)).await.unwrap();
            guard.unlock().await.unwrap();
        }
    };
    let columns = || async {
        let r = sqlx::query(
            "SELECT generation, format, payload FROM shiftkey_tokens WHERE credential = 'mes'",
        )
        .fetch_one(store.pool())
        .await
        .unwrap();
        (
            r.get::<i64, _>("generation"),
            r.get::<i16, _>("format"),
            r.get::<Vec<u8>, _>("payload"),
        )
    };
    save(1).await;
    let (_, format, old) = columns().await;
    assert_eq!(format, 3, "the row records the format it was written in");
    save(2).await;

    // The old payload put back, the generation column left: refused by a store that never saw
    // the row before, too (the payload's generation is authenticated).
    sqlx::query("UPDATE shiftkey_tokens SET payload = $1 WHERE credential = 'mes'")
        .bind(&old)
        .execute(store.pool())
        .await
        .unwrap();
    let fresh = PgStore::connect(&pg.url(), "mes", key()).await.unwrap();
    let err = fresh.load().await.unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Corrupt, "{err}");
    assert!(
        err.detail.contains("rolled back") && err.detail.contains("generation column 2"),
        "{err}"
    );

    // The whole row restored (payload and columns): the store that wrote generation 2 refuses it.
    sqlx::query("UPDATE shiftkey_tokens SET generation = 1 WHERE credential = 'mes'")
        .execute(store.pool())
        .await
        .unwrap();
    let err = store.load().await.unwrap_err();
    assert!(err.detail.contains("older than generation 2"), "{err}");

    // Under the lock the refused payload is moved aside; a token written next (a login that
    // found nothing) follows the newest generation seen, so no sibling takes it for a rollback.
    let mut guard = store.lock().await.unwrap();
    assert_eq!(
        guard.load().await.unwrap_err().kind,
        StoreErrorKind::Corrupt
    );
    guard.save(&token(1)).await.unwrap();
    guard.unlock().await.unwrap();
    assert_eq!(store.load().await.unwrap().unwrap().generation, 3);
    let aside: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM shiftkey_tokens WHERE credential LIKE 'mes.corrupt-%' AND payload = $1",
    )
    .bind(&old)
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(aside, 1, "the rolled-back payload is kept for inspection");
    let (generation, _, _) = columns().await;
    assert_eq!(generation, 3);
}

fn token(generation: u64) -> shiftkey_auth::StoredToken {
    shiftkey_auth::StoredToken {
        access_token: format!("at-{generation}").into(),
        refresh_token: Some(format!("rt-{generation}").into()),
        token_type: "Bearer".into(),
        issued_at: std::time::SystemTime::UNIX_EPOCH
            + std::time::Duration::from_secs(1_800_000_000),
        lifetime: std::time::Duration::from_secs(3600),
        lifetime_source: shiftkey_auth::StoredLifetimeSource::ExpiresIn,
        scope: None,
        generation,
        limits: shiftkey_auth::ServerLimits::default(),
    }
}

/// TLS to PostgreSQL: `sslmode=verify-full` with the right CA connects; with another CA the
/// connection is refused, and the error says it is the certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_connects_with_the_right_ca_and_refuses_a_wrong_one() {
    use shiftkey_tests::postgres::TestCa;
    let dir = temp_dir("pg-tls");
    let ca = TestCa::new(&dir, "right");
    let other = TestCa::new(&dir, "wrong");
    let pg = PgServer::start_tls(&ca);
    let url = |ca: &TestCa| {
        format!(
            "{}?sslmode=verify-full&sslrootcert={}",
            pg.url(),
            ca.cert_file.display()
        )
    };
    let key = || KeySource::from_base64(KEY, "test").unwrap();
    let store = PgStore::connect(&url(&ca), "tls", key()).await.unwrap();
    let tls: bool = {
        use sqlx::Row;
        sqlx::query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(store.pool())
            .await
            .unwrap()
            .get("ssl")
    };
    assert!(tls, "the connection is encrypted");
    let err = PgStore::connect(&url(&other), "tls", key())
        .await
        .unwrap_err();
    let shown = err.to_string().to_lowercase();
    assert!(
        shown.contains("certificate") || shown.contains("issuer"),
        "{err}"
    );
    // The sink goes through the same driver.
    let sink = shiftkey_shopfloor::SqlSink::connect(&url(&ca))
        .await
        .unwrap();
    sink.close().await;
    assert!(
        shiftkey_shopfloor::SqlSink::connect(&url(&other))
            .await
            .is_err()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A TCP relay to `upstream` that can stop forwarding in both directions, as a database host that
/// vanished behind a network cut would (the connections stay open, nothing answers). What is
/// sent during the cut is lost; a side that closes its connection closes the other.
async fn relay(upstream: std::net::SocketAddr) -> (std::net::SocketAddr, Arc<AtomicBool>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let frozen = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let flag = Arc::clone(&frozen);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                continue;
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            for (mut from, mut to, flag) in [
                (
                    Box::new(cr) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                    Box::new(sw) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
                    Arc::clone(&flag),
                ),
                (Box::new(sr) as _, Box::new(cw) as _, Arc::clone(&flag)),
            ] {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match from.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if flag.load(Ordering::SeqCst) {
                            continue;
                        }
                        if to.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });
    (addr, frozen)
}

/// A database that stops answering fails each store call after `STORE_DEADLINE`, with an error
/// naming the step, instead of holding a refresh for good; the connection the cut refresh held is
/// closed (its row lock with it), so the store works again when the database is back. Paused
/// time during the cut: the deadlines pass at once, and nothing else is waiting.
#[tokio::test(flavor = "current_thread")]
async fn a_database_that_stops_answering_fails_store_calls_at_their_deadline() {
    // A hang guard: without the deadlines the calls below would wait for good.
    tokio::time::timeout(Duration::from_secs(600), cut_mid_refresh())
        .await
        .expect("a store call outlived its deadline");
}

async fn cut_mid_refresh() {
    let pg = PgServer::start();
    let upstream: std::net::SocketAddr = format!("127.0.0.1:{}", pg.port()).parse().unwrap();
    let (addr, cut) = relay(upstream).await;
    let url = format!("postgres://postgres@{addr}/postgres");
    let store = PgStore::connect(
        &url,
        "plant-sync",
        KeySource::from_base64(KEY, "test").unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(store.load().await.unwrap(), None);
    // The cut lands inside a refresh: the row is locked, the new token not yet saved.
    let mut guard = store.lock().await.unwrap();
    cut.store(true, Ordering::SeqCst);
    tokio::time::pause();
    let started = tokio::time::Instant::now();
    let err = guard.save(&token(1)).await.unwrap_err();
    assert_eq!(err.kind, shiftkey_auth::StoreErrorKind::Io, "{err}");
    assert!(err.to_string().contains("PostgreSQL: save"), "{err}");
    drop(guard);
    let err = store.load().await.unwrap_err();
    assert_eq!(err.kind, shiftkey_auth::StoreErrorKind::Io, "{err}");
    assert!(err.to_string().contains("PostgreSQL: load"), "{err}");
    assert!(
        started.elapsed() <= 2 * shiftkey_store::STORE_DEADLINE + Duration::from_secs(1),
        "each call waited at most its deadline: {:?}",
        started.elapsed()
    );
    // The connection handed back after the cut is checked before it may rejoin the pool: let
    // that check run out.
    tokio::time::sleep(Duration::from_secs(10)).await;
    // The database is back. The cut refresh's row lock went with its connection: a new refresh
    // takes the row (it would wait out the lock timeout and fail if that connection lived on).
    cut.store(false, Ordering::SeqCst);
    tokio::time::resume();
    let mut guard = store.lock().await.unwrap();
    guard.save(&token(2)).await.unwrap();
    guard.unlock().await.unwrap();
    assert_eq!(store.load().await.unwrap().map(|t| t.generation), Some(2));
}

/// Two watched leases on one real PostgreSQL: never two leaders; when the server stops, the
/// leader's very next report says it no longer leads (its waiting query ends with the
/// connection, no polling interval to sit out); after the restart exactly one leads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_lease_steps_down_at_its_next_report_when_the_database_stops() {
    use shiftkey_sync::{LeaseState, WatchedLease};
    let pg = PgServer::start();
    let check = Duration::from_secs(1);
    let leases = [
        WatchedLease::spawn(pg.url(), 77, check),
        WatchedLease::spawn(pg.url(), 77, check),
    ];
    let leaders = |leases: &[WatchedLease; 2]| -> Vec<usize> {
        (0..2)
            .filter(|i| leases[*i].report().state == LeaseState::Leader)
            .collect()
    };
    // One leads (sampled every 20 ms for at most 30 s, never two).
    let mut leader = None;
    for _ in 0..1500 {
        let now = leaders(&leases);
        assert!(now.len() < 2, "two leaders");
        if let [one] = now[..] {
            leader = Some(one);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let leader = leader.expect("a leader within 30 s");
    assert_eq!(leases[1 - leader].report().state, LeaseState::Follower);

    let mut reports = leases[leader].subscribe();
    reports.borrow_and_update();
    pg.stop();
    // The first report after the stop already says "not the leader".
    tokio::time::timeout(Duration::from_secs(60), reports.changed())
        .await
        .expect("a report within a minute")
        .unwrap();
    let state = reports.borrow_and_update().state.clone();
    assert!(
        matches!(state, LeaseState::Unreachable { .. }),
        "the old leader's next report: {state:?}"
    );
    assert!(leaders(&leases).is_empty());

    pg.resume();
    let mut back = false;
    for _ in 0..1500 {
        let now = leaders(&leases);
        assert!(now.len() < 2, "two leaders after the restart");
        if now.len() == 1 {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(back, "one leader again within 30 s of the restart");
}
