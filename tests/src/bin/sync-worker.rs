//! A sync process for the crash and leader tests: `sync-worker SIM_URL SINK_URL [LEASE_URL]`
//! runs sync cycles back to back (small batches, many commit points) until killed. With a lease URL
//! it syncs only while it holds the leader lease, and prints `cycle` after each cycle it ran.
//!
//! With `SYNC_WORKER_PHASES=1` it also says where it is, and stays there until a line on stdin
//! tells it to go on, so that a killer can kill it exactly there: `in-tx` inside a sink
//! transaction (rows written, not committed), `fb-written N fresh` after this push wrote feedback
//! row N to Teamcenter and before the outbox marks it sent (`fb-written N again` when Teamcenter
//! already held it: an earlier push was killed before its mark). With `SYNC_WORKER_FEEDBACK=PROPERTY` it pushes
//! feedback into that site property.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "the worker reports to its parent"
)]

use std::io::Write;
use std::sync::Arc;

use shiftkey_shopfloor::SqlSink;
use shiftkey_sync::{Engine, EngineConfig, Lease, PgLease, Stop};
use shiftkey_teamcenter::{ReadConfig, SessionConfig, TcClient};

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: sync-worker SIM_URL SINK_URL [LEASE_URL]");
        return std::process::ExitCode::FAILURE;
    }
    let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    else {
        return std::process::ExitCode::FAILURE;
    };
    rt.block_on(async move {
        let Ok(base) = args[0].parse() else {
            return std::process::ExitCode::FAILURE;
        };
        let tc = match TcClient::session(
            reqwest::Client::new(),
            SessionConfig::new(base, "mfg_sync", "mfg_sync_pw".into()),
        ) {
            Ok(tc) => tc,
            Err(e) => {
                eprintln!("{e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        let phases = std::env::var("SYNC_WORKER_PHASES").is_ok_and(|v| v == "1");
        // Where the worker is, said and held until the killer says go on (or closes stdin): the
        // killer kills it there. A signal, not a timer, so a slow killer still lands in the phase.
        let say = |line: String| {
            let mut out = std::io::stdout();
            let _ = writeln!(out, "{line}").and_then(|()| out.flush());
            let _ = std::io::stdin().read_line(&mut String::new());
        };
        let sink = match SqlSink::connect(&args[1]).await {
            Ok(s) if phases => Arc::new(s.with_before_commit(Arc::new(move || {
                say("in-tx".to_owned());
            }))),
            Ok(s) => Arc::new(s),
            Err(e) => {
                eprintln!("{e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        let feedback = std::env::var("SYNC_WORKER_FEEDBACK")
            .ok()
            .map(shiftkey_teamcenter::FeedbackConfig::new);
        let mut engine = Engine::new(
            tc,
            sink,
            EngineConfig {
                batch: 2,
                read: ReadConfig::default().with_chunk(7),
                feedback,
                ..EngineConfig::default()
            },
        );
        if phases {
            engine = engine.on_phase(Arc::new(move |phase| {
                if let shiftkey_sync::Phase::FeedbackWritten { row, fresh } = phase {
                    let how = if fresh { "fresh" } else { "again" };
                    say(format!("fb-written {row} {how}"));
                }
            }));
        }
        let mut lease = args.get(2).map(|url| PgLease::new(url.clone(), 4242));
        let mut out = std::io::stdout();
        loop {
            if let Some(l) = lease.as_mut()
                && !l.ensure().await
            {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
            match engine.cycle(&Stop::default()).await {
                Ok(_) => {
                    let _ = writeln!(out, "cycle").and_then(|()| out.flush());
                }
                Err(e) => eprintln!("cycle failed: {e}"),
            }
            if lease.is_some() {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    })
}
