//! Reading a script's request body within bounds: a byte must come at least every idle deadline,
//! the whole body within a total one, and the bytes held for replay across all of a proxy's
//! connections stay under a budget (a body that does not fit streams on and is sent once).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt as _};
use shiftkey_http::RequestBodyError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// How long a body may go without a byte.
pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a whole request body may take to arrive.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(120);

/// Bytes held for replay across all of a proxy's connections at once.
pub const DEFAULT_REPLAY_BUDGET: usize = 32 * 1024 * 1024;

/// The deadlines of one body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadlines {
    pub(crate) idle: Duration,
    pub(crate) total: Duration,
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    /// No byte within the idle deadline, or not all of it within the total one.
    #[error(
        "the request body stopped arriving (no byte for {0:?}, or longer than the total deadline)"
    )]
    Slow(Duration),
    /// Longer than the most this answer reads.
    #[error("the request body is longer than {0} bytes")]
    TooLong(usize),
    /// The connection failed.
    #[error("cannot read the request body: {0}")]
    Read(#[source] axum::Error),
}

/// A body as a stream whose every chunk must come within the idle deadline and before the total
/// one; after a miss it yields one error and ends.
fn bounded(
    body: Body,
    limits: Deadlines,
) -> impl Stream<Item = Result<Bytes, BodyError>> + Send + 'static {
    let end = Instant::now() + limits.total;
    futures_util::stream::unfold(Some(body.into_data_stream()), move |state| async move {
        let mut stream = state?;
        let by = (Instant::now() + limits.idle).min(end);
        match tokio::time::timeout_at(by, stream.next()).await {
            Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(stream))),
            Ok(Some(Err(e))) => Some((Err(BodyError::Read(e)), None)),
            Ok(None) => None,
            Err(_) => Some((Err(BodyError::Slow(limits.idle)), None)),
        }
    })
}

/// Reads a small body whole (a local login), within `limits` and at most `max` bytes.
pub(crate) async fn read_all(
    body: Body,
    limits: Deadlines,
    max: usize,
) -> Result<Bytes, BodyError> {
    let mut stream = std::pin::pin!(bounded(body, limits));
    let mut held = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if held.len() + chunk.len() > max {
            return Err(BodyError::TooLong(max));
        }
        held.extend_from_slice(&chunk);
    }
    Ok(held.freeze())
}

/// A body to forward, and the share of the replay budget it holds (released when dropped).
pub(crate) struct Forwarded {
    pub(crate) body: reqwest::Body,
    pub(crate) _held: Option<OwnedSemaphorePermit>,
}

/// Reads a body for forwarding: held whole (replayable) while it is at most `replay_limit`
/// bytes and the budget has room for it; else what was read goes first and the rest streams
/// on, under the same deadlines. `size_hint` (the `Content-Length`) sizes the buffer.
pub(crate) async fn for_forwarding(
    body: Body,
    limits: Deadlines,
    replay_limit: usize,
    budget: &Arc<Semaphore>,
    size_hint: Option<usize>,
) -> Result<Forwarded, BodyError> {
    let mut stream = Box::pin(bounded(body, limits));
    let mut held = BytesMut::with_capacity(size_hint.unwrap_or(0).min(replay_limit));
    let mut permit: Option<OwnedSemaphorePermit> = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        let fits = held.len() + chunk.len() <= replay_limit
            && u32::try_from(chunk.len())
                .ok()
                .and_then(|n| Arc::clone(budget).try_acquire_many_owned(n).ok())
                .map(|p| match &mut permit {
                    Some(held) => held.merge(p),
                    None => permit = Some(p),
                })
                .is_some();
        held.extend_from_slice(&chunk);
        if !fits {
            let head = futures_util::stream::iter([Ok::<Bytes, BodyError>(held.freeze())]);
            // Marked as the script's fault: the upstream's circuit does not count it.
            let rest = head.chain(stream).map(|c| c.map_err(RequestBodyError::new));
            return Ok(Forwarded {
                body: reqwest::Body::wrap_stream(rest),
                _held: permit,
            });
        }
    }
    Ok(Forwarded {
        body: reqwest::Body::from(held.freeze()),
        _held: permit,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;

    const LIMITS: Deadlines = Deadlines {
        idle: Duration::from_secs(10),
        total: Duration::from_secs(120),
    };

    /// A body that sends `chunks` with `gap` before each, then ends (or stalls for ever).
    fn trickle(chunks: usize, gap: Duration, stall: bool) -> Body {
        let s = futures_util::stream::unfold(0, move |i| async move {
            if i == chunks {
                if stall {
                    std::future::pending::<()>().await;
                }
                return None;
            }
            tokio::time::sleep(gap).await;
            Some((
                Ok::<_, std::io::Error>(Bytes::from_static(b"0123456789")),
                i + 1,
            ))
        });
        Body::from_stream(s)
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stalls_is_cut_off_at_the_idle_deadline_and_a_slow_one_at_the_total() {
        let budget = Arc::new(Semaphore::new(1 << 20));
        let stalled = for_forwarding(
            trickle(1, Duration::ZERO, true),
            LIMITS,
            1024,
            &budget,
            None,
        );
        let started = Instant::now();
        assert!(matches!(stalled.await, Err(BodyError::Slow(_))));
        assert_eq!(started.elapsed(), LIMITS.idle);
        // A byte every 9 s never misses the idle deadline; the total one ends it at 120 s.
        let slow = for_forwarding(
            trickle(100, Duration::from_secs(9), false),
            LIMITS,
            1 << 20,
            &budget,
            None,
        );
        let started = Instant::now();
        assert!(matches!(slow.await, Err(BodyError::Slow(_))));
        assert_eq!(started.elapsed(), LIMITS.total);
        // Everything held was given back.
        assert_eq!(budget.available_permits(), 1 << 20);
        let ok = read_all(trickle(3, Duration::from_secs(1), false), LIMITS, 64)
            .await
            .unwrap();
        assert_eq!(ok.len(), 30);
        assert!(matches!(
            read_all(trickle(7, Duration::ZERO, false), LIMITS, 64).await,
            Err(BodyError::TooLong(64))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn bodies_are_held_only_while_the_budget_has_room() {
        let budget = Arc::new(Semaphore::new(25));
        let first = for_forwarding(
            trickle(2, Duration::ZERO, false),
            LIMITS,
            1024,
            &budget,
            Some(20),
        )
        .await
        .unwrap();
        // Held: replayable, and 20 of 25 bytes of the budget are taken while it lives.
        assert!(first.body.as_bytes().is_some());
        assert_eq!(budget.available_permits(), 5);
        let second = for_forwarding(
            trickle(2, Duration::ZERO, false),
            LIMITS,
            1024,
            &budget,
            None,
        )
        .await
        .unwrap();
        assert!(
            second.body.as_bytes().is_none(),
            "no room: streamed, sent once"
        );
        drop((first, second));
        assert_eq!(budget.available_permits(), 25);
        // Over the replay limit: streamed whatever the budget.
        let long = for_forwarding(trickle(2, Duration::ZERO, false), LIMITS, 15, &budget, None)
            .await
            .unwrap();
        assert!(long.body.as_bytes().is_none());
    }
}
