//! The emulator as a standalone server until `shiftkey sim` exists:
//! `shiftkey-sim [--port N] [--time-scale X] [--config scenario.toml]`.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line tool"
)]

use std::sync::Arc;
use std::time::SystemTime;

use shiftkey_sim::{ScaledClock, Sim, SimConfig};

fn usage() -> ! {
    eprintln!("usage: shiftkey-sim [--port N] [--time-scale X] [--config scenario.toml]");
    std::process::exit(2)
}

fn main() {
    let mut port = 8080u16;
    let mut scale = 1.0f64;
    let mut cfg = SimConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--port" => port = value.parse().unwrap_or_else(|_| usage()),
            "--time-scale" => scale = value.parse().unwrap_or_else(|_| usage()),
            "--config" => {
                let text = std::fs::read_to_string(&value).unwrap_or_else(|e| {
                    eprintln!("shiftkey-sim: cannot read {value}: {e}");
                    std::process::exit(2)
                });
                cfg = SimConfig::from_toml(&text).unwrap_or_else(|e| {
                    eprintln!("shiftkey-sim: {value}: {e}");
                    std::process::exit(2)
                });
            }
            _ => usage(),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| {
            eprintln!("shiftkey-sim: {e}");
            std::process::exit(1)
        });
    rt.block_on(async move {
        #[allow(
            clippy::disallowed_methods,
            reason = "the emulator's simulated time starts at the real wall time"
        )]
        let clock = Arc::new(ScaledClock::new(SystemTime::now(), scale));
        let sim = Sim::start_on(cfg, clock, ([127, 0, 0, 1], port).into())
            .await
            .unwrap_or_else(|e| {
                eprintln!("shiftkey-sim: cannot listen on 127.0.0.1:{port}: {e}");
                std::process::exit(1)
            });
        println!(
            "shiftkey-sim listening on {} (time scale {scale})",
            sim.url()
        );
        let _ = tokio::signal::ctrl_c().await;
    });
}
