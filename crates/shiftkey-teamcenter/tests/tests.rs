//! shiftkey-teamcenter against the emulator (paused time on one thread: client and server share
//! the runtime), plus parser properties.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod parse;
mod reads;
mod site;
