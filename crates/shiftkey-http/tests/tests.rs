//! shiftkey-http's tests: the middleware against a scripted axum resource server on loopback,
//! in paused time on a single-threaded runtime (client and server share it, so auto-advance never
//! jumps while a reply is in flight; `paused_time_does_not_jump_during_a_request` proves it).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod resource;
mod scenarios;
