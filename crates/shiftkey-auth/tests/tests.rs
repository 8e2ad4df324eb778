//! shiftkey-auth's integration tests: one binary, a module per area.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod bearer;
mod manager;
mod timing_props;
mod transport;
mod wire;
