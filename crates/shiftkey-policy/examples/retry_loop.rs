//! A call that fails twice with 503 and then succeeds, driven by the retry policy, the retry
//! budget and a circuit breaker: the loop a client without `shiftkey-http` writes by hand.
//!
//! Run: `cargo run -p shiftkey-policy --example retry_loop` (offline, about a second).

#![allow(
    clippy::print_stdout,
    clippy::disallowed_methods,
    reason = "an example shows what happens, on the real clock"
)]

use std::time::{Duration, Instant};

use shiftkey_policy::{
    Backoff, CircuitBreaker, Decision, GiveUp, Outcome, Replay, RetryBudget, RetryPolicy,
};

/// The server: 503 on the first two calls, then a success.
fn call(n: u32) -> Outcome {
    if n <= 2 {
        Outcome::Status(503)
    } else {
        Outcome::Success
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Short delays so the example ends quickly; the defaults start at 500 ms.
    let policy = RetryPolicy {
        backoff: Backoff {
            base: Duration::from_millis(50),
            ..Backoff::api()
        },
    };
    let budget = RetryBudget::default();
    let breaker = CircuitBreaker::default();
    let mut attempt = 1;
    let outcome = loop {
        breaker.allow(Instant::now())?;
        let outcome = call(attempt);
        breaker.record(Instant::now(), !outcome.is_server_failure());
        // The jitter draw: a fixed one here, a random one in a real client.
        match policy.decide(&outcome, attempt, Replay::Safe, Some(&budget), 0.5) {
            Decision::Retry(delay) => {
                println!("attempt {attempt}: {outcome:?}; again in {delay:?}");
                tokio::time::sleep(delay).await;
            }
            Decision::GiveUp(why) => {
                println!("attempt {attempt}: {outcome:?}; done ({why:?})");
                break why;
            }
        }
        attempt += 1;
    };
    if outcome != GiveUp::Succeeded || attempt != 3 {
        return Err(format!(
            "expected a success on the third attempt, got {outcome:?} on {attempt}"
        )
        .into());
    }
    Ok(())
}
