//! Cross-crate integration tests against real servers on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod faults;
mod http;
mod oauth;
mod soak;
mod store;
mod sync;
