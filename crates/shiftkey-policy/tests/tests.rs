//! shiftkey-policy's tests: unit tables and property tests (run long by `cargo xtask proptest`).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
#![allow(
    clippy::disallowed_methods,
    reason = "tests pick an arbitrary origin instant; the policy takes `now` as input"
)]

mod edges;
mod props;
mod units;
